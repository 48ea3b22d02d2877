from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_dist.tools.sink import OtlpSink
from support.servers import ServerProcess, start_server


@pytest.fixture
def otlp_sink() -> Iterator[OtlpSink]:
    """A started OTLP/HTTP sink on a free loopback port, stopped after the test."""
    with OtlpSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def sink() -> Iterator[OtlpSink]:
    """One started OTLP/HTTP sink shared by a module's tests (they tell their data apart)."""
    with OtlpSink() as started:
        yield started


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``start_server`` with the same arguments; every server started is stopped at teardown."""
    started: list[ServerProcess] = []

    def factory(argv: list[str], **kwargs: Any) -> ServerProcess:
        kwargs.setdefault("output_dir", tmp_path)
        server = start_server(argv, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in reversed(started):
        server.stop()

"""Native span export (fastotel, the ``[native]`` extra): chosen, configured, accounted for.

What leaves the process is read from a real OTLP sink; the environments without the wheel and
the forked children are real processes. The fault suite runs whole with it on and off
(``make faults-ci NATIVE=on`` / ``NATIVE=off``).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import otel_dist
from otel_dist.internal_log import internal_logger
from otel_dist.plan import decide_native_export
from otel_dist.sdk.native import INSTALL_HINT, NativeSpanExport
from otel_dist.settings import load_settings
from otel_dist.telemetry import Telemetry
from otel_dist.tools.doctor import diagnose
from otel_dist.tools.sink import OtlpSink
from support.servers import REPO_ROOT

USED = "fastotel 0.9.1: spans batched, encoded and sent off the GIL"
FAILING = "otel-dist: telemetry export failing"


def _native_line(env: dict[str, str]) -> tuple[str, list[str]]:
    report = diagnose(env=env, network=False)
    settings = dict(report.sections)["settings (secrets masked)"]
    return next(line for line in settings if line.startswith("native span export")), report.problems


@pytest.mark.parametrize(
    ("env", "line", "problems"),
    [
        ({}, f"native span export = auto: used: {USED}", []),
        (
            {"OTEL_DIST_NATIVE_EXPORT": "off"},
            "native span export = off: not used: OTEL_DIST_NATIVE_EXPORT=off",
            [],
        ),
        (
            {"OTEL_DIST_NATIVE_EXPORT": "on", "OTEL_TRACES_EXPORTER": "console"},
            "native span export = on: not used: the traces exporter is console: fastotel sends "
            "OTLP only",
            [
                "OTEL_DIST_NATIVE_EXPORT=on, but the traces exporter is console: fastotel sends "
                "OTLP only; spans are exported by the SDK"
            ],
        ),
        (
            {"OTEL_DIST_NATIVE_EXPORT": "auto", "OTEL_TRACES_EXPORTER": "none"},
            "native span export = auto: not used: spans are not exported",
            [],
        ),
        (
            {"OTEL_DIST_NATIVE_EXPORT": "on", "OTEL_TRACES_EXPORTER": "none"},
            "native span export = on: not used: spans are not exported",
            [],
        ),
    ],
)
def test_doctor_shows_the_span_export_path_and_why(
    env: dict[str, str], line: str, problems: list[str]
) -> None:
    assert _native_line(env) == (line, problems)


def test_grpc_traces_keep_the_sdk_exporter_and_doctor_says_why() -> None:
    # (Decided as if the [grpc] extra were installed: without it traces are not exported.)
    settings = load_settings({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"})
    decision = decide_native_export(settings, traces_exported=True)

    assert not decision.runs
    assert decision.why == "traces go over OTLP/gRPC and fastotel sends OTLP/HTTP only"


def test_a_bad_value_is_named_with_the_accepted_ones() -> None:
    with pytest.raises(otel_dist.ConfigurationError) as raised:
        load_settings({"OTEL_DIST_NATIVE_EXPORT": "yes"})

    assert str(raised.value) == (
        "OTEL_DIST_NATIVE_EXPORT='yes' is not valid: accepted values: auto, on, off"
    )


@pytest.fixture
def configured() -> Iterator[list[Telemetry]]:
    """Telemetry handles configured by a test, shut down (every hook undone) after it."""
    handles: list[Telemetry] = []
    yield handles
    for handle in handles:
        handle.shutdown()


@pytest.fixture
def said() -> Iterator[list[str]]:
    """What otel-dist says on its internal logger during the test."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = internal_logger()
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def _configure(handles: list[Telemetry], sink: OtlpSink, **options: object) -> Telemetry:
    telemetry = otel_dist.configure(
        env={},
        otlp_endpoint=sink.endpoint,
        metrics_exporter="none",
        logs_exporter="none",
        bsp_schedule_delay_ms=100,
        **options,
    )
    handles.append(telemetry)
    return telemetry


def test_settings_are_passed_not_reread_and_secrets_scrubbed_before_handing_over(
    otlp_sink: OtlpSink, configured: list[Telemetry], monkeypatch: pytest.MonkeyPatch
) -> None:
    # fastotel reads these itself when not given arguments: ours must win.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "deflate")
    telemetry = _configure(configured, otlp_sink, otlp_compression="gzip")
    assert isinstance(telemetry.providers.native_spans, NativeSpanExport)

    tracer = telemetry.providers.tracer_provider.get_tracer("native-test")  # type: ignore[union-attr]
    with tracer.start_as_current_span("with a secret", attributes={"password": "hunter2"}) as span:
        span.add_event("login", {"api_key": "k-123", "user": "ann"})
    with tracer.start_as_current_span("plain", attributes={"user": "ann"}):
        pass

    assert telemetry.force_flush()
    assert otlp_sink.wait_for(lambda s: len(s.spans()) >= 2, 10)
    spans = {s.name: s for s in otlp_sink.spans()}
    assert spans["with a secret"].attributes == {"password": "[REDACTED]"}
    assert spans["with a secret"].events[0]["attributes"] == {
        "api_key": "[REDACTED]",
        "user": "ann",
    }
    assert spans["plain"].attributes == {"user": "ann"}
    assert otlp_sink.bad_requests == 0


def test_failed_and_dropped_spans_are_reported_then_the_recovery(
    otlp_sink: OtlpSink, configured: list[Telemetry], said: list[str]
) -> None:
    telemetry = _configure(
        configured,
        otlp_sink,
        otlp_timeout=1,
        bsp_max_queue_size=4,
        bsp_max_export_batch_size=2,
        native_export="on",
    )
    health = telemetry.providers.export_health
    assert health is not None
    assert telemetry.providers.native_spans is not None
    otlp_sink.fail_with = 400  # not retried: each batch fails at once
    tracer = telemetry.providers.tracer_provider.get_tracer("native-test")  # type: ignore[union-attr]
    for number in range(40):
        with tracer.start_as_current_span(f"lost {number}"):
            pass

    deadline = time.monotonic() + 15
    while health.status().dropped["traces"] < 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    status = health.status()
    losses = telemetry.providers.native_spans.losses.totals
    # Every span is accounted for: rejected by the collector or turned away by the full queue.
    assert status.dropped["traces"] == losses.failed + losses.dropped == 40
    assert losses.dropped > 0
    assert status.failing == ("traces",)
    assert [line.partition(";")[0] for line in said] == [FAILING]

    otlp_sink.fail_with = None
    quiet_until = time.monotonic() + 0.1 + 1 + 1.5  # batch delay + export timeout + polls
    while time.monotonic() < quiet_until or health.status().failing:
        with tracer.start_as_current_span("after the outage"):
            pass
        time.sleep(0.2)
        assert time.monotonic() < deadline + 15, health.status()
    assert any(s.name == "after the outage" for s in otlp_sink.spans())
    assert said[1].startswith("otel-dist: telemetry export recovered after "), said


SCRIPT_PRELUDE = """
import os, sys
from opentelemetry import trace
import otel_dist
from otel_dist.tools.sink import OtlpSink

sink = OtlpSink().start()
telemetry = otel_dist.configure(
    env={}, otlp_endpoint=sink.endpoint, metrics_exporter="none", logs_exporter="none",
    bsp_schedule_delay_ms=100, native_export=sys.argv[1],
)
tracer = trace.get_tracer("script")
"""


def _run(
    script: str, *args: str, pythonpath: list[str] | None = None, isolated: bool = False
) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([*(pythonpath or []), str(REPO_ROOT / "src")])
    command = [sys.executable, *(["-S"] if isolated else []), "-c", SCRIPT_PRELUDE + script, *args]
    done = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


FORK_SCRIPT = """
import fastotel
if sys.argv[2] == "fastotel fails in the child":
    class Unusable:
        def __init__(self, **kwargs):
            raise RuntimeError("no native thread here")
    fastotel.OTLPSpanProcessor = Unusable
with tracer.start_as_current_span("parent before fork"):
    pass
pid = os.fork()
if pid == 0:
    with tracer.start_as_current_span(f"child {os.getpid()}"):
        pass
    telemetry.shutdown()
    os._exit(0)
os.waitpid(pid, 0)
telemetry.shutdown()
ok = sink.wait_for(lambda s: any(x.name == f"child {pid}" for x in s.spans()), 10)
print("child span exported:", ok, "child", pid)
"""


@pytest.mark.parametrize("case", ["fastotel starts again", "fastotel fails in the child"])
def test_a_forked_child_exports_its_spans(case: str) -> None:
    output = _run(FORK_SCRIPT, "on", case)

    found = re.search(r"^child span exported: True child (\d+)$", output, re.MULTILINE)
    assert found is not None, output
    child = found.group(1)
    fallback = (
        f"otel-dist: native span export could not start in forked process {child} "
        "(RuntimeError: no native thread here); its spans are exported by the SDK"
    )
    lines = [line for line in output.splitlines() if "native" in line]
    assert lines == ([fallback] if case == "fastotel fails in the child" else []), output


MISSING_WHEEL_SCRIPT = """
with tracer.start_as_current_span("exported without the wheel"):
    pass
telemetry.force_flush()
ok = sink.wait_for(lambda s: len(s.spans()) == 1, 10)
print("span exported:", ok, "native:", telemetry.providers.native_spans is not None)
telemetry.shutdown()
"""


@pytest.fixture(scope="module")
def site_without_fastotel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This venv's packages, but not fastotel's (links, for a ``python -S`` run)."""
    site = Path(pytest.__file__).parents[1]
    mirror = tmp_path_factory.mktemp("site-without-fastotel")
    for entry in site.iterdir():
        if not entry.name.startswith(("fastotel", "_")) and entry.suffix != ".pth":
            (mirror / entry.name).symlink_to(entry)
    return mirror


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        (
            "on",
            [
                "otel-dist: OTEL_DIST_NATIVE_EXPORT=on, but fastotel is not installed "
                f"({INSTALL_HINT}); spans are exported by the SDK"
            ],
        ),
        ("auto", []),
    ],
)
def test_without_the_wheel_spans_go_through_the_sdk(
    site_without_fastotel: Path, setting: str, said: list[str]
) -> None:
    output = _run(
        MISSING_WHEEL_SCRIPT, setting, pythonpath=[str(site_without_fastotel)], isolated=True
    )

    assert "span exported: True native: False" in output, output
    assert [line for line in output.splitlines() if "fastotel" in line] == said

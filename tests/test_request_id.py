"""Request ids: safe ids are kept, anything else is replaced by a fresh id, never echoed."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from otel_dist.fastapi import request_id

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(
    "incoming",
    [
        "abc-123",
        "0af7651916cd43dd8448eb211c80319c",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "req:2026.11.22_01",
        "a" * 128,
    ],
)
def test_safe_incoming_id_is_kept(incoming):
    assert request_id.accept_or_generate(incoming) == incoming
    assert request_id.accept_or_generate(incoming.encode()) == incoming


@pytest.mark.parametrize(
    "incoming",
    [
        "",
        "a" * 129,
        "x" * 10_000,
        "evil\nINFO forged line",
        'quote"d',
        "it's",
        "tab\there",
        "semi;colon",
        "<script>",
        "ünïcode",
        "space here",
        "\x00nul",
        b"\xff\xfe".decode("latin-1"),
    ],
)
def test_unsafe_incoming_id_is_replaced(incoming):
    generated = request_id.accept_or_generate(incoming)
    assert GENERATED.fullmatch(generated)
    assert generated != incoming


def test_missing_id_is_generated_uniquely():
    ids = {request_id.accept_or_generate(None) for _ in range(100)}
    assert len(ids) == 100


def test_generated_id_is_a_uuid4_in_hex():
    for _ in range(100):
        generated = request_id.accept_or_generate(None)
        assert GENERATED.fullmatch(generated)
        parsed = uuid.UUID(hex=generated)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_bind_and_unbind_restore_previous():
    assert request_id.current_request_id() is None
    token = request_id.bind("outer")
    inner = request_id.bind("inner")
    assert request_id.current_request_id() == "inner"
    request_id.unbind(inner)
    assert request_id.current_request_id() == "outer"
    request_id.unbind(token)
    assert request_id.current_request_id() is None


def test_forked_child_generates_ids_its_parent_does_not():
    request_id.accept_or_generate(None)  # the parent now holds ids made but not handed out
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.close(read_end)
        child_ids = " ".join(request_id.accept_or_generate(None) for _ in range(10))
        os.write(write_end, child_ids.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    parent = {request_id.accept_or_generate(None) for _ in range(100)}
    assert len(child) == 10
    assert not child & parent

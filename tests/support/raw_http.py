"""HTTP/1.1 requests written byte by byte, for input a client library refuses to send.

httpx (through h11) will not put a newline, a control character or a non-Latin-1 character in a
header, nor raw invalid UTF-8 in a path; attackers do. ``request_bytes`` builds the request as
given and ``send_raw`` writes it on a fresh connection (``Connection: close``) and reads the
answer to the end.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class RawResponse:
    """What came back: ``status`` 0 when no status line did (``error`` then says why)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    error: str = ""

    def header(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


def request_bytes(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``method target HTTP/1.1`` with Host, ``Connection: close`` and ``headers`` verbatim."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def send_raw(port: int, request: bytes, timeout: float = 10) -> RawResponse:
    """Write ``request`` to 127.0.0.1:``port`` and read until the server closes."""
    chunks: list[bytes] = []
    error = ""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
            connection.sendall(request)
            while chunk := connection.recv(65536):
                chunks.append(chunk)
    except OSError as exc:  # reset, refused, timed out: recorded, judged by the caller
        error = f"{type(exc).__name__}: {exc}"
    return _parse(b"".join(chunks), error)


def _parse(raw: bytes, error: str) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return RawResponse(0, (), raw, error or f"no status line in {raw[:80]!r}")
    headers = tuple(
        (name.strip(), value.strip())
        for name, _, value in (line.partition(b":") for line in header_lines)
    )
    return RawResponse(int(parts[1]), headers, body, error)

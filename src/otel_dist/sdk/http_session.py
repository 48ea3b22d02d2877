"""The HTTP session of each OTLP/HTTP exporter: one that never shares a connection across a fork.

The exporter keeps its connections open between exports (keep-alive). A process that forks after
exporting — a gunicorn master under ``opentelemetry-instrument`` or with ``--preload`` — leaves
its children a copy of that open socket: parent and child then write requests on one connection
and each may read the other's response, so one waits out the exporter's timeout and retries (a
late batch, sent twice). This session notices that it runs in a new process and drops the
inherited connections (closing only the child's copies; the parent's stay open) before its first
request there.

Nothing on the export path may be imported for the first time on an export thread either: a fork
during that import would leave the child's export threads waiting forever on its import lock.
"""

from __future__ import annotations

# requests imports netrc lazily, on a session's first request (to look for credentials). In a
# process that forks after setting up (a gunicorn master under the launcher), an export thread
# can be in the middle of that first import when the fork happens: the child then inherits
# netrc's import lock held by a thread it does not have, and every export thread of that worker
# blocks on it for good, so nothing the worker produces ever leaves. Imported here, before any
# export thread runs, netrc is never imported on an export thread.
import netrc  # noqa: F401
import os
from typing import Any

import requests

from otel_dist.settings import Signal

# A credential provider (an entry point named by these variables) supplies its own session; the
# SDK loads it when we pass none, and it is used as it is.
_CREDENTIAL_PROVIDER_VARIABLES = ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",)


class ForkSafeSession(requests.Session):
    """A ``requests.Session`` that opens its own connections in each process it runs in."""

    def __init__(self) -> None:
        super().__init__()
        self._pid = os.getpid()

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        """Send as ``requests.Session`` does, after dropping connections made in another process."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self.close()  # the adapters stay usable: their next request opens a new connection
        return super().request(*args, **kwargs)


def session_for(signal: Signal, env: dict[str, str] | None = None) -> ForkSafeSession | None:
    """Our session for ``signal``'s exporter, or None when a credential provider supplies one."""
    env = dict(os.environ) if env is None else env
    names = (*_CREDENTIAL_PROVIDER_VARIABLES, _credential_variable(signal))
    if any(env.get(name) for name in names):
        return None
    return ForkSafeSession()


def _credential_variable(signal: Signal) -> str:
    return f"OTEL_PYTHON_EXPORTER_OTLP_HTTP_{signal.upper()}_CREDENTIAL_PROVIDER"

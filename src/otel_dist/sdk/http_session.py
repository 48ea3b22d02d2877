"""The HTTP session of each OTLP/HTTP exporter: one that never shares a connection across a fork.

The exporter keeps its connections open between exports (keep-alive). A process that forks after
exporting — a gunicorn master under ``opentelemetry-instrument`` or with ``--preload`` — leaves
its children a copy of that open socket: parent and child then write requests on one connection
and each may read the other's response, so one waits out the exporter's timeout and retries (a
late batch, sent twice). This session notices that it runs in a new process and, before its
first request there, sets the inherited connection pools aside for new ones (without touching
their locks, which a parent thread may have held at the fork; the parent's connections stay open).

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
from collections import OrderedDict
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from otel_dist.settings import Signal

# A credential provider (an entry point named by these variables) supplies its own session; the
# SDK loads it when we pass none, and it is used as it is.
_CREDENTIAL_PROVIDER_VARIABLES = ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",)


class ForkSafeSession(requests.Session):
    """A ``requests.Session`` that opens its own connections in each process it runs in."""

    def __init__(self) -> None:
        super().__init__()
        self._pid = os.getpid()
        self._inherited: list[Any] = []

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        """Send as ``requests.Session`` does, on connection pools of this process's own."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._set_inherited_pools_aside()
        return super().request(*args, **kwargs)

    def _set_inherited_pools_aside(self) -> None:
        # Closing the inherited pools takes their locks, and a parent thread may have held one
        # at the fork (its export was picking or returning a connection): nobody in this process
        # would ever release it, and this export thread would wait on it for good. So they are
        # left untouched, and kept so that no finalizer takes those locks either; their sockets
        # (copies of the parent's, never written here) close when this process ends.
        self._inherited.append(self.adapters)
        self.adapters = OrderedDict()
        self.mount("https://", HTTPAdapter())
        self.mount("http://", HTTPAdapter())


def session_for(signal: Signal, env: dict[str, str] | None = None) -> ForkSafeSession | None:
    """Our session for ``signal``'s exporter, or None when a credential provider supplies one."""
    env = dict(os.environ) if env is None else env
    names = (*_CREDENTIAL_PROVIDER_VARIABLES, _credential_variable(signal))
    if any(env.get(name) for name in names):
        return None
    return ForkSafeSession()


def _credential_variable(signal: Signal) -> str:
    return f"OTEL_PYTHON_EXPORTER_OTLP_HTTP_{signal.upper()}_CREDENTIAL_PROVIDER"

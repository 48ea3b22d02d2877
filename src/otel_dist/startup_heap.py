"""Full garbage collections that skip what the server holds from its start (``gc.freeze``).

CPython's full collection walks every container object the process holds: in the example shop
about 115,000 right after startup (modules, functions, classes, caches), for ~100 ms of CPU
during which no request moves. It runs whenever the objects promoted into the oldest generation
since the last one reach a quarter of those it kept: under steady load every 30-40 s, and during
a collector outage more of them stay behind in the full batch queues (2 x 2,048 spans and log
records, ~40,000 objects) and in failed exports' exception-traceback-frame cycles, so the pauses
of the outage and of its catch-up were the longest (up to 150 ms of CPU). Such a pause stalls
every request in flight, which shows in the tail of a short window.

The objects alive when the server has started almost all live as long as the process. So once
the app's lifespan startup has completed, in a server process (the lifespan runs on its main
thread; a test client's runs on another), garbage is collected once and everything left is
frozen: later collections skip it, and a full one costs a few ms. Reference counting still frees
frozen objects; only a cycle among them that becomes garbage later stays until shutdown, where
``Telemetry.shutdown()`` unfreezes (through ``CHANGES``; on CPython 3.12 that includes the few
hundred objects the interpreter froze itself). An app that froze objects itself, or turned the
collector off, manages the collector: nothing is changed then.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from otel_dist.global_changes import CHANGES

_FREEZE = ("gc freeze",)
# What the interpreter froze by itself before any app code ran (CPython 3.12 starts with a few
# hundred objects frozen, 3.11 and 3.13 with none): more than this means the app froze objects.
_FROZEN_BY_THE_INTERPRETER = gc.get_freeze_count()

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def freeze_startup_heap() -> bool:
    """Collect garbage, then freeze every object alive now; False if nothing was changed."""

    def make() -> Callable[[], None]:
        if gc.get_freeze_count() > _FROZEN_BY_THE_INTERPRETER or not gc.isenabled():
            return lambda: None  # the app manages the collector: not ours to undo either
        gc.collect()
        gc.freeze()
        return gc.unfreeze

    return CHANGES.register(_FREEZE, make)


class FreezeHeapAfterStartup:
    """ASGI wrapper: freezes the startup heap when a server's lifespan startup completes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass every call through; on a server's lifespan, freeze before startup is reported."""
        if scope["type"] != "lifespan" or threading.current_thread() is not threading.main_thread():
            await self.app(scope, receive, send)
            return

        async def freeze_then_send(message: Message) -> None:
            # Before the server hears of it: it accepts connections only after, so the one full
            # collection delays no request.
            if message["type"] == "lifespan.startup.complete":
                freeze_startup_heap()
            await send(message)

        await self.app(scope, receive, freeze_then_send)

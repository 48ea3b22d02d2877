"""Every process-global change otel-dist makes is undone by ``shutdown()``, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, logging, logging.config, os, signal
import fastapi, structlog
from opentelemetry import propagate
from sqlalchemy.pool import Pool

def ours(logger_name):
    filters = logging.getLogger(logger_name).filters
    return sum(type(f).__module__.startswith("otel_dist") for f in filters)

def state():
    return {
        "FastAPI.__init__": id(fastapi.FastAPI.__init__),
        "Pool.connect": id(Pool.connect),
        "structlog.configure": id(structlog.configure),
        "logging.basicConfig": id(logging.basicConfig),
        "logging.config.dictConfig": id(logging.config.dictConfig),
        "record factory": id(logging.getLogRecordFactory()),
        "uvicorn.error filters": ours("uvicorn.error"),
        "SDK logger filters": ours("opentelemetry.sdk._shared_internal"),
        "OTEL_SEMCONV_STABILITY_OPT_IN": os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN"),
        "propagator": type(propagate.get_global_textmap()).__name__,
        "SIGTERM": repr(signal.getsignal(signal.SIGTERM)),
    }

before = state()
from otel_dist import configure
telemetry = configure(trust_incoming_context=False)
app = fastapi.FastAPI()
during = state()
telemetry.shutdown()
after = state()
print(json.dumps({"before": before, "during": during, "after": after}))
"""


def test_shutdown_undoes_every_global_change() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="console")
    env.update(OTEL_LOGS_EXPORTER="console")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    states = json.loads(done.stdout.strip().splitlines()[-1])
    before, during, after = states["before"], states["during"], states["after"]

    changed = {name for name in before if during[name] != before[name]}
    assert changed == {
        "FastAPI.__init__",
        "Pool.connect",
        "structlog.configure",
        "logging.basicConfig",
        "logging.config.dictConfig",
        "record factory",
        "uvicorn.error filters",
        "SDK logger filters",
        "OTEL_SEMCONV_STABILITY_OPT_IN",
        "propagator",
        "SIGTERM",
    }
    assert after == before

"""``make demo``: the shop, instrumented with otel-dist, on SQLite, with its telemetry on screen.

Starts ``otel-dist sink`` (a local OTLP receiver that prints every span, log and metric it gets)
and the shop under uvicorn pointed at it, sends a few requests (a create, a read, a 404, a 500),
prints each response with its trace id, then keeps serving until Ctrl-C, or for
``DEMO_SECONDS`` seconds when that is set. No Docker, no collector, no network.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the shop exited early with status {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"the shop did not answer on {url} within {timeout} s")


def show(response: httpx.Response) -> None:
    print(f"\n>>> {response.request.method} {response.request.url.path} -> {response.status_code}")
    for name in ("x-request-id", "traceresponse", "server-timing"):
        if name in response.headers:
            print(f"    {name}: {response.headers[name]}")
    print(f"    body: {response.text[:300]}")


def drive(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        created = client.post("/items", json={"name": "teapot", "price_cents": 1250})
        show(created)
        item_id = created.json().get("id", 1)
        show(client.get(f"/items/{item_id}", headers={"X-Request-ID": "demo-req-1"}))
        show(client.get(f"/async/items/{item_id}"))
        show(client.get("/items/999999"))
        show(client.post("/items", json={"name": "", "price_cents": -1}))
        show(client.get("/fail"))


def main() -> int:
    sink_port = free_port(4318)
    app_port = free_port(8000)
    workdir = Path(os.environ.get("DEMO_DIR", ROOT / ".demo"))
    workdir.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
        "OTEL_BLRP_SCHEDULE_DELAY": "500",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "DATABASE_URL": f"sqlite:///{workdir / 'shop.db'}",
        "SHOP_SELF_URL": f"http://127.0.0.1:{app_port}",
    }
    print(f"otel-dist demo: sink on 127.0.0.1:{sink_port}, shop on http://127.0.0.1:{app_port}")
    sink = subprocess.Popen([str(BIN / "otel-dist"), "sink", "--port", str(sink_port)], env=env)
    app = subprocess.Popen(
        [
            str(BIN / "uvicorn"),
            "examples.shop.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(app_port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{app_port}/healthz", app)
        drive(f"http://127.0.0.1:{app_port}")
        seconds = os.environ.get("DEMO_SECONDS")
        print("\nTelemetry lines (span/log/metric) are printed above as the sink receives them.")
        if seconds:
            time.sleep(float(seconds))
        else:
            print(f"The shop keeps serving on http://127.0.0.1:{app_port}/docs; Ctrl-C to stop.")
            app.wait()
    except KeyboardInterrupt:
        pass
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=15)
        time.sleep(1.0)
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

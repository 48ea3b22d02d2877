"""``make demo``: a tour of the shop's telemetry, one numbered step per request.

Starts an OTLP receiver (``OtlpSink``, in this process) and the shop (``examples/shop``, set up
with ``configure()``) under uvicorn, on SQLite, pointed at it. Sends six requests (a create, two
reads, a 404, a 422 and a 500), then stops the shop, which makes it export everything it still
holds, and prints each step: the response with its ids, the request's spans as a tree, its log
records and the metric series it was counted in; then a summary of all metrics, once.

Then the shop serves again until Ctrl-C (or for ``DEMO_SECONDS`` seconds when that is set; 0
skips this part), and the requests sent to it are shown the same way when it stops. The shop's
own output goes to ``.demo/shop.log`` (``DEMO_DIR`` to choose another directory), and it listens
on port 8000 (``DEMO_PORT`` to choose another), or any free port if that one is taken. No Docker,
no collector, loopback only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from examples.tour import (
    OtlpSink,
    Step,
    metric_summary_lines,
    step_lines,
    trace_ids_in_order,
    trace_lines,
)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# How long the shop gets to stop and flush; otel-dist bounds its own flush at 5 s.
STOP_TIMEOUT_S = 30


def free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(preferred_port: int) -> OtlpSink:
    try:
        return OtlpSink(port=preferred_port).start()
    except OSError:
        return OtlpSink().start()


def start_shop(app_port: int, sink: OtlpSink, workdir: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "DATABASE_URL": f"sqlite:///{workdir / 'shop.db'}",
        "SHOP_SELF_URL": f"http://127.0.0.1:{app_port}",
    }
    argv = [str(BIN / "uvicorn"), "examples.shop.main:app", "--host", "127.0.0.1"]
    argv += ["--port", str(app_port)]
    with (workdir / "shop.log").open("ab") as log:
        # A new session, so Ctrl-C reaches the demo only and the demo stops the shop itself.
        return subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
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


def stop_shop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the shop finishes, and otel-dist exports what it still holds before exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        print(f"the shop did not stop within {STOP_TIMEOUT_S} s and was killed")


def drive(base: str) -> list[Step]:
    steps: list[Step] = []

    def step(title: str, response: httpx.Response) -> httpx.Response:
        steps.append(Step(len(steps) + 1, title, response))
        return response

    with httpx.Client(base_url=base, timeout=30) as client:
        created = step(
            "Create an item (one INSERT)",
            client.post("/items", json={"name": "teapot", "price_cents": 1250}),
        )
        item_id = created.json().get("id", 1)
        step(
            "Read it, with your own X-Request-ID",
            client.get(f"/items/{item_id}", headers={"X-Request-ID": "demo-req-1"}),
        )
        step("Read it through the async engine", client.get(f"/async/items/{item_id}"))
        step("Read an item that does not exist: 404", client.get("/items/999999"))
        step(
            "Send an invalid item: 422, FastAPI's own body",
            client.post("/items", json={"name": "", "price_cents": -1}),
        )
        step("An unhandled exception: 500 with the ids in its body", client.get("/fail"))
    return steps


def wait_for_traces(sink: OtlpSink, trace_ids: Sequence[str]) -> list[str]:
    """The trace ids whose request span has not arrived after the shop stopped (normally none)."""

    def missing(current: OtlpSink) -> list[str]:
        roots = {s.trace_id for s in current.spans() if s.kind == "SERVER"}
        return [trace_id for trace_id in trace_ids if trace_id not in roots]

    sink.wait_for(lambda current: not missing(current), timeout=10)
    return missing(sink)


def print_lines(lines: Sequence[str]) -> None:
    print("\n".join(lines), flush=True)


def print_tour(sink: OtlpSink, steps: Sequence[Step]) -> None:
    spans, logs, metrics = sink.spans(), sink.logs(), sink.metrics()
    for step in steps:
        print()
        print_lines(step_lines(step, spans, logs, metrics))
    print()
    print_lines(metric_summary_lines(metrics))


def print_free_requests(sink: OtlpSink) -> None:
    spans, logs = sink.spans(), sink.logs()
    trace_ids = trace_ids_in_order(spans)
    print(f"\nWhat the shop sent for the {len(trace_ids)} requests you made:")
    for number, trace_id in enumerate(trace_ids, start=1):
        print(f"\nRequest {number}")
        print_lines(trace_lines(trace_id, spans, logs))
    print()
    print_lines(metric_summary_lines(sink.metrics()))


def tour(sink: OtlpSink, app_port: int, workdir: Path) -> bool:
    base = f"http://127.0.0.1:{app_port}"
    app = start_shop(app_port, sink, workdir)
    try:
        wait_until_up(f"{base}/healthz", app)
        print("Sending six requests, then stopping the shop so that it exports what it holds...")
        steps = drive(base)
    finally:
        stop_shop(app)
    missing = wait_for_traces(sink, [step.trace_id for step in steps])
    print(
        f"The shop answered {len(steps)} requests and sent {len(sink.spans())} spans, "
        f"{len(sink.logs())} log records and {len(sink.metrics())} metric points. "
        "Each step below shows the response, then the telemetry of that request."
    )
    print_tour(sink, steps)
    if missing:
        print(f"\nNo request span arrived for trace(s) {', '.join(missing)}.")
    return not missing


def serve_on(sink: OtlpSink, app_port: int, workdir: Path, seconds: float | None) -> None:
    sink.clear()
    app = start_shop(app_port, sink, workdir)
    base = f"http://127.0.0.1:{app_port}"
    try:
        wait_until_up(f"{base}/healthz", app)
        until = f"for {seconds:g} s" if seconds is not None else "until you press Ctrl-C"
        print(
            f"\nThe shop serves again on {base}/docs {until}. Send it requests: "
            "what they produce is shown the same way when it stops."
        )
        try:
            if seconds is None:
                app.wait()
            else:
                time.sleep(seconds)
        except KeyboardInterrupt:
            print("\nStopping the shop...")
    finally:
        stop_shop(app)
    print_free_requests(sink)


def main() -> int:
    workdir = Path(os.environ.get("DEMO_DIR", ROOT / ".demo")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    seconds_setting = os.environ.get("DEMO_SECONDS")
    seconds = float(seconds_setting) if seconds_setting else None
    app_port = free_port(int(os.environ.get("DEMO_PORT", "8000")))
    sink = start_sink(4318)
    try:
        print(
            f"otel-dist demo: the shop on http://127.0.0.1:{app_port}, exporting OTLP to "
            f"{sink.endpoint} (a receiver in this process). Its own output goes to "
            f"{workdir / 'shop.log'}; its telemetry is printed below."
        )
        complete = tour(sink, app_port, workdir)
        if seconds is None or seconds > 0:
            serve_on(sink, app_port, workdir, seconds)
    finally:
        sink.stop()
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The overhead benchmark: one app, four telemetry setups, measured side by side (``make bench``).

Nothing here is imported by otel_dist; ``python -m bench.run --help`` is the entry point.
"""

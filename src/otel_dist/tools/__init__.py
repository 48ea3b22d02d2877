"""otel-dist's tools: the ``otel-dist`` command, ``doctor`` and the OTLP ``sink``.

Nothing in the runtime (``configure()``, the launcher's entry points) imports this package.
"""

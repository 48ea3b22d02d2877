"""``python -m otel_dist.tools.sink``: the same as ``otel-dist sink``."""

from otel_dist.tools.sink.printer import main

raise SystemExit(main())

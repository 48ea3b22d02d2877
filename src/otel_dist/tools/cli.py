"""The ``otel-dist`` command: ``doctor`` and ``sink``."""

from __future__ import annotations

import sys

from otel_dist.version import __version__

USAGE = """usage: otel-dist COMMAND [options]

commands:
  doctor [--no-network]   effective settings, versions, instrumentations, conflicts, endpoints
  sink [--host H] [--port P] [--duration S]
                          a local OTLP/HTTP receiver that prints what your app sends
  --version               print the version
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the process exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        # A missing command is a usage error: the usage goes to stderr, like argparse does.
        print(USAGE, end="", file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = args[0], args[1:]
    if command == "--version":
        print(f"otel-dist {__version__}")
        return 0
    if command == "doctor":
        from otel_dist.tools import doctor  # noqa: PLC0415

        return doctor.main(rest)
    if command == "sink":
        from otel_dist.tools import sink  # noqa: PLC0415

        return sink.main(rest)
    print(f"otel-dist: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

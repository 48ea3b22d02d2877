"""The installed version of otel-dist, read from the package metadata (pyproject.toml holds it).

Modules that need the version import it from here, never from the ``otel_dist`` facade, so
nothing in the package imports upward into it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _installed_version() -> str:
    try:
        return version("otel-dist")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()

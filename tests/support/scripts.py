"""Load the repository's scripts (``stack/run.py``, ``stack/postgres.py``) as modules in tests."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from support.servers import REPO_ROOT


def load_script(relative_path: str, module_name: str) -> ModuleType:
    """The script at ``relative_path`` (from the repository root) imported as ``module_name``."""
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / relative_path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module

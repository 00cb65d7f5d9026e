"""The engine modules that the build also compiles with Cython, and the guard that keeps a
stale compiled copy from shadowing its source.

The modules below are ordinary Python: they run as they are, and ``setup.py`` also compiles
each one (Cython's pure-Python mode, same behaviour) into an extension module next to it,
which Python's import system prefers to the ``.py``. That takes about a quarter of the
interpreter's work off the commit path, the change-stream reader and the views' steps
(measured with callgrind: 302k instructions per durable single-row transaction in source
form, 220k compiled).

The classes on the commit path (the transaction, the table engine, the head state, the
catalog, the log and its writer) are also declared as extension types (``@cython.cclass``
with ``cython.declare``-d public fields; ``cython.ccall`` on the methods they call on
themselves): compiled, ``self.x`` is a field of a C struct rather than a dictionary lookup
through the class, which took the same transaction from 170k to under 90k instructions.
Run from source, the declarations do nothing (``udrflow/_cython_shim.py`` stands in for
Cython there when it is not installed). The one difference compiled: such an object takes
no attribute that its class does not declare.

An extension module next to a ``.py`` that changed after it was built would silently run
old code. :func:`install` (run first thing by ``udrflow/__init__.py``) looks for that: a
module whose ``.py`` is newer than its compiled copy (by more than a second, so files
extracted from one wheel together never count) is imported from its source instead, with
a warning to rebuild (``make ext``). ``UDRFLOW_PURE_PYTHON=1`` imports every one of them
from source (for profilers that see only Python frames, such as cProfile and py-spy).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import warnings

# Dotted names under ``udrflow``. setup.py reads this tuple with ``ast`` (it cannot import
# the package), so it must stay a literal.
COMPILED_MODULES = (
    "_catalog",
    "_clock",
    "_changefeed",
    "_commit",
    "_database",
    "_fold",
    "_head",
    "_pyrows",
    "_schema",
    "_tables",
    "_transaction",
    "log._head",
    "log._log",
    "log._writer",
    "views._plan",
    "views._view",
)

PURE_ENV = "UDRFLOW_PURE_PYTHON"
_STALE_SLACK_S = 1.0
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the listed modules as their ``.py`` files, ahead of the path finder."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources

    def find_spec(self, fullname, path=None, target=None):
        source = self.sources.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def _compiled_path(base: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(base + suffix):
            return base + suffix
    return None


def sources_to_use(package_dir: str = _PACKAGE_DIR, pure: bool | None = None) -> tuple[dict[str, str], list[str]]:
    """(modules to import from source: full name -> .py path, the stale ones among them)."""
    if pure is None:
        pure = os.environ.get(PURE_ENV, "") not in ("", "0")
    sources: dict[str, str] = {}
    stale: list[str] = []
    for name in COMPILED_MODULES:
        base = os.path.join(package_dir, *name.split("."))
        source = base + ".py"
        compiled = _compiled_path(base)
        if compiled is None or not os.path.exists(source):
            continue  # not built (the normal import finds the .py), or shipped compiled only
        if pure:
            sources["udrflow." + name] = source
        elif os.stat(source).st_mtime > os.stat(compiled).st_mtime + _STALE_SLACK_S:
            sources["udrflow." + name] = source
            stale.append(source)
    return sources, stale


def install() -> None:
    import sys

    if any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        return
    sources, stale = sources_to_use()
    if stale:
        names = ", ".join(os.path.relpath(s, os.path.dirname(_PACKAGE_DIR)) for s in stale)
        warnings.warn(f"udrflow: {names} changed after being compiled: running the Python source instead "
                      f"(rebuild with `make ext`)", RuntimeWarning, stacklevel=3)
    if sources:
        sys.meta_path.insert(0, _SourceFinder(sources))


def compiled() -> dict[str, bool]:
    """Which of the listed modules run compiled in this process (for ``udrflow doctor``-style
    reports and the tests)."""
    import sys

    out = {}
    for name in COMPILED_MODULES:
        module = sys.modules.get("udrflow." + name)
        out[name] = module is not None and not (getattr(module, "__file__", "") or "").endswith(".py")
    return out

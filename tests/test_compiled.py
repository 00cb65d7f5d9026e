"""The compiled engine modules (udrflow/_compiled.py): built, preferred when fresh, never
run stale."""

from __future__ import annotations

import ast
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import udrflow
from udrflow import _compiled

ROOT = Path(__file__).resolve().parents[1]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _layout(tmp_path: Path, names: list[str], source_newer: set[str]) -> Path:
    package = tmp_path / "pkg"
    for name in _compiled.COMPILED_MODULES:
        base = package.joinpath(*name.split("."))
        base.parent.mkdir(parents=True, exist_ok=True)
        source = base.with_name(base.name + ".py")
        source.write_text("")
        if name in names:
            compiled = base.with_name(base.name + SUFFIX)
            compiled.write_bytes(b"")
            built = 1_000_000.0
            os.utime(compiled, (built, built))
            os.utime(source, (built + (10.0 if name in source_newer else -10.0),) * 2)
    return package


def test_stale_compiled_modules_give_way_to_their_source(tmp_path):
    package = _layout(tmp_path, ["_tables", "log._writer", "_fold"], source_newer={"log._writer"})
    sources, stale = _compiled.sources_to_use(str(package), pure=False)
    assert sources == {"udrflow.log._writer": str(package / "log" / "_writer.py")}
    assert stale == [str(package / "log" / "_writer.py")]


def test_pure_mode_takes_every_built_module_from_source(tmp_path):
    package = _layout(tmp_path, ["_tables", "_fold"], source_newer=set())
    sources, stale = _compiled.sources_to_use(str(package), pure=True)
    assert sorted(sources) == ["udrflow._fold", "udrflow._tables"]
    assert stale == []


def test_a_second_of_slack_for_files_extracted_together(tmp_path):
    package = _layout(tmp_path, ["_tables"], source_newer=set())
    compiled = package / ("_tables" + SUFFIX)
    t = os.stat(compiled).st_mtime
    os.utime(package / "_tables.py", (t + 0.5, t + 0.5))
    assert _compiled.sources_to_use(str(package), pure=False) == ({}, [])


def test_setup_py_compiles_the_listed_modules():
    tree = ast.parse((ROOT / "setup.py").read_text())
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "compiled_modules" in calls
    for name in _compiled.COMPILED_MODULES:
        assert (ROOT / "udrflow").joinpath(*name.split(".")).with_suffix(".py").exists(), name


def test_built_modules_run_compiled_unless_pure_is_asked():
    package = Path(udrflow.__file__).parent
    built = [n for n in _compiled.COMPILED_MODULES
             if any(package.joinpath(*n.split(".")).with_name(n.split(".")[-1] + s).exists()
                    for s in importlib.machinery.EXTENSION_SUFFIXES)]
    probe = ("import udrflow, udrflow.views, udrflow._compiled as c; "
             "import json; print(json.dumps(c.compiled()))")
    env = {k: v for k, v in os.environ.items() if k != _compiled.PURE_ENV}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", probe], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    fresh = set(_compiled.COMPILED_MODULES) - set(n.removeprefix("udrflow.")
                                                   for n in _compiled.sources_to_use(pure=False)[0])
    got = json.loads(out)
    assert {n for n in built if n in fresh} == {n for n, c in got.items() if c}
    env[_compiled.PURE_ENV] = "1"
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert not any(json.loads(out).values())

"""Mechanical style as a test (STYLE.md 14): ruff is clean, durable file operations in
the storage layers go through udrflow._fileio, and only udrflow/_clock.py reads the wall
clock for commit times."""

import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
STORAGE = [p for p in (ROOT / "udrflow").rglob("*.py") if "log" in p.parts or p.name in ("_database.py",)]


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).parent / "ruff")
    dirs = [d for d in ("udrflow", "connectors", "tests", "benchmarks", "examples") if (ROOT / d).exists()]
    proc = subprocess.run([ruff, "check", *dirs], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_storage_layers_use_the_durable_file_layer():
    banned = re.compile(r"\bos\.(rename|replace|fsync|fdatasync|write|pwrite|pwritev|ftruncate|mkdir)\(")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in STORAGE
                 for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert not offenders, f"use udrflow._fileio.FileIO (injectable, durable) instead: {offenders}"


def test_wall_clock_is_read_only_in_the_clock_module():
    pattern = re.compile(r"\btime\.(time|time_ns)\(|datetime\.now\(|datetime\.utcnow\(")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "udrflow").rglob("*.py")
                 if p.name not in ("_clock.py", "_demo.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, f"take a Clock (udrflow._clock) instead of reading the wall clock: {offenders}"


def test_every_cython_module_has_a_stub():
    for pyx in (ROOT / "udrflow" / "_ext").glob("*.pyx"):
        assert pyx.with_suffix(".pyi").exists(), f"{pyx.name} needs a .pyi stub next to it"

"""Helpers shared by the benchmark scripts (bench_log.py, bench_tables.py), kept in one place so they
cannot drift apart."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TMP = ROOT / "benchmarks" / ".tmp"
RESULTS_DIR = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    op: str  # ">=" or "<="
    target: float

    @property
    def passed(self) -> bool:
        return self.value >= self.target if self.op == ">=" else self.value <= self.target


def verdict(targets: list[Target], name: str) -> str:
    t = next(t for t in targets if t.name == name)
    return f"{'PASS' if t.passed else 'MISS'} (target {t.op} {t.target:g})"


class Scratch:
    """Fresh directories under one temp root (``<name>-XXXX`` in ``parent``) on the benchmarked
    filesystem."""

    def __init__(self, parent: Path, name: str) -> None:
        self._parent = parent
        parent.mkdir(parents=True, exist_ok=True)
        self.root = tempfile.mkdtemp(prefix=f"{name}-", dir=parent)

    def fresh(self, name: str) -> str:
        return tempfile.mkdtemp(prefix=f"{name}-", dir=self.root)

    @staticmethod
    def discard(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            self._parent.rmdir()  # only if nothing else lives there
        except OSError:
            pass


def rotated(items: list, shift: int) -> list:
    shift %= len(items)
    return items[shift:] + items[:shift]


def filesystem_of(path: str) -> dict:
    real, best = os.path.realpath(path), ("", "unknown", "unknown")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, mount, fstype = line.split()[:3]
                if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best[0]):
                    best = (mount, fstype, device)
    except OSError:
        pass
    return {"path": real, "mount": best[0], "fstype": best[1], "device": best[2],
            "same_device_as_repo": os.stat(path).st_dev == os.stat(ROOT).st_dev,
            "free_bytes": shutil.disk_usage(path).free}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sources_digest(files: Iterable[Path]) -> str:
    """SHA-256 over ``files`` (paths under ROOT), in the order given, each as its repository-relative
    path, a NUL, then its bytes: ties results to the code measured (no git needed)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def machine_info(scratch_root: str, extra: dict[str, object]) -> dict:
    """What the results were measured on; ``extra`` (the script's own entries: versions, sources
    digest, ...) goes between the CPU and the filesystem entries."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        **extra,
        "filesystem": filesystem_of(scratch_root),
        "loadavg_start": list(os.getloadavg()),
    }


def targets_json(targets: Iterable[Target]) -> list[dict]:
    """The targets as they go into a results file."""
    return [{"name": t.name, "value": t.value, "op": t.op, "target": t.target, "pass": t.passed} for t in targets]


def write_result(result: dict, output: Path) -> None:
    """Print the results as JSON and write them to ``output``."""
    import json

    text = json.dumps(result, indent=2)
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n")


def print_targets(targets: list[Target], line: str, notes: Iterable[str] = ()) -> None:
    """The closing block every benchmark prints: how many targets pass, each target's
    verdict, the notes, and a rule."""
    passed = sum(t.passed for t in targets)
    print(f"targets: {passed}/{len(targets)} pass" + "".join(
        f"\n    {'PASS' if t.passed else 'MISS'}  {t.name}: {t.value:,.3f} {t.op} {t.target:g}" for t in targets))
    for note in notes:
        print(f"note: {note}")
    print(line)

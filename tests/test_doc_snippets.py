"""The Python snippets of the README and of every page in docs/ run as written: each
document's ```python blocks, in order, form one script, run in a fresh directory (so a
relative path like "shop.udr" is a new database). A snippet that drifts from the API
fails here. Blocks marked ```python-no-run are left out: none should need to be."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def snippets(doc: str) -> list[str]:
    return _BLOCK.findall((ROOT / doc).read_text())


@pytest.mark.parametrize("doc", [d for d in DOCS if snippets(d)])
def test_the_snippets_of_a_document_run_as_written(doc, tmp_path):
    script = "\n\n".join(f"# ---- block {i + 1} of {doc}\n{block}" for i, block in enumerate(snippets(doc)))
    (tmp_path / "snippets.py").write_text(script)
    proc = subprocess.run([sys.executable, "snippets.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, f"{doc}:\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"

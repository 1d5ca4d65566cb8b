"""Helper for tests that execute the code blocks of README.md and docs/*.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def doc_files() -> list[Path]:
    """README.md, then every page of docs/ in name order."""
    return [README, *sorted(DOCS.glob("*.md"))]


def readme_block(marker: str) -> str:
    """The fenced python block right after ``<!-- test: marker -->`` in README.md or docs/.

    A marker names one block in all of them together; two blocks with one marker are an
    error, so that a test never runs a stale copy.
    """
    pattern = re.compile(rf"<!-- test: {re.escape(marker)} -->\s*```python\n(.*?)```", re.S)
    found = [(p, m.group(1)) for p in doc_files() for m in pattern.finditer(p.read_text())]
    assert found, f"README.md and docs/*.md have no code block marked {marker!r}"
    assert len(found) == 1, f"code block {marker!r} appears {len(found)} times: {found}"
    return found[0][1]

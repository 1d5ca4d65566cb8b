"""Helper for tests that execute README.md code blocks."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    """The fenced python block right after ``<!-- test: marker -->`` in README.md."""
    text = README.read_text()
    m = re.search(rf"<!-- test: {re.escape(marker)} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README.md has no code block marked {marker!r}"
    return m.group(1)

"""The README's code examples run as written.

Every fenced ``python`` block that follows a ``<!-- readme-test: NAME -->`` marker is
executed in a fresh namespace.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- readme-test: ([\w-]+) -->\s*```python\n(.*?)```", re.S)


def readme_blocks() -> dict[str, str]:
    return {name: code for name, code in BLOCK.findall(README.read_text(encoding="utf-8"))}


def test_readme_has_tested_examples():
    assert "api-tour" in readme_blocks()


@pytest.mark.parametrize("name", sorted(readme_blocks()))
def test_readme_example_runs(name):
    code = readme_blocks()[name]
    exec(compile(code, f"README.md[{name}]", "exec"), {"__name__": f"readme_{name}"})

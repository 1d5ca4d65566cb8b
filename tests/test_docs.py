"""The docs' numbers are the results files': README.md and docs/*.md against experiments/report.py.

Every table and number in the docs sits in a ``<!-- results: NAME -->`` block that
``experiments/report.py`` renders from ``experiments/results/`` and ``benchmarks/results/``.
These tests fail when a block differs from what the current results give (rerun
``python experiments/report.py``), when a file the docs link to or a block reads is missing,
and when the README grows past what a newcomer reads in five minutes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from _readme import DOCS, README, ROOT, doc_files

sys.path.insert(0, str(ROOT))

from experiments import report

README_MAX_LINES = 300
STUDIES = (
    "gradient_decay",
    "weight_scale",
    "forget_bias",
    "after_training",
    "long_range",
    "distance",
    "copy_task",
    "literature",
    "truncation",
    "char_lm",
    "rnn_types",
    "flax_model",
    "performance",
)


def test_every_results_file_a_block_reads_exists():
    assert report.missing_inputs() == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_generated_blocks_match_the_results(path: Path):
    text = path.read_text()
    rendered = report.render(text)
    stale = [
        m.group(2)
        for m, new in zip(report.BLOCK.finditer(text), report.BLOCK.finditer(rendered))
        if m.group(3) != new.group(3)
    ]
    assert rendered == text, (
        f"{path.name}: blocks {stale} differ from the results; run python experiments/report.py"
    )


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_linked_files_exist(path: Path):
    assert report.missing_links(path) == []


def test_check_mode_passes():
    assert report.main(["--check"]) == 0


def test_every_block_name_is_known_and_every_renderer_is_used():
    used = {m.group(2) for p in doc_files() for m in report.BLOCK.finditer(p.read_text())}
    assert used <= set(report.RENDERERS), used - set(report.RENDERERS)
    assert set(report.RENDERERS) <= used, set(report.RENDERERS) - used


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize("study", STUDIES)
def test_each_study_has_a_page_linked_from_the_readme(study: str):
    assert (DOCS / f"{study}.md").exists()
    assert f"(docs/{study}.md)" in README.read_text()


def test_no_dated_runs_or_commit_hashes():
    for path in doc_files():
        text = path.read_text()
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{path.name}: a dated run"
        assert "git show" not in text, f"{path.name}: a reference to an old commit"


def test_a_stale_block_is_caught(tmp_path: Path):
    text = "<!-- results: forget_bias -->\n| made up |\n<!-- /results -->\n"
    assert report.render(text) != text
    with pytest.raises(KeyError):
        report.render("<!-- results: no_such_block -->\n<!-- /results -->\n")
    page = tmp_path / "page.md"
    page.write_text("![figure](missing.png) [ok](page.md) [web](https://example.org/x)")
    assert report.missing_links(page) == ["missing.png"]

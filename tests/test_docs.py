"""The docs' numbers are the results files': README.md and docs/*.md against experiments/report.py.

Every table and number in the docs sits in a ``<!-- results: NAME -->`` block that
``experiments/report.py`` renders from ``experiments/results/`` and ``benchmarks/results/``.
These tests fail when a block differs from what the current results give (rerun
``python -m experiments.report``), when a file the docs link to or a block reads is missing,
and when the README grows past what a newcomer reads in five minutes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _readme import DOCS, README, doc_files

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
        f"{path.name}: blocks {stale} differ from the results; run python -m experiments.report"
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


def test_parity_speed_rows_read_every_parity_scripts_layout():
    """The speed table reads each parity script's own "speed" layout as reference / ours,
    with the faster of our forms and of the reference's paths; no "speed": not measured."""
    rg = {"B": 1, "T": 8, "H": 2, "forward": {"seconds": {"recurrentgemma": 6.0, "ours_step": 3.0,
          "ours_parallel": 2.0}, "speedup_step": 2.0}, "train": {"seconds": {
          "recurrentgemma": 4.0, "ours_step": 8.0, "ours_parallel": 9.0}}}  # fmt: skip
    lru = {"shape": [1, 8, 2], "forward": {"ours_step": 1.0, "ours_parallel": 4.0, "memax": 3.0,
           "memax_over_ours_best": 3.0}, "train": {"ours_step": 2.0, "ours_parallel": 1.0,
           "memax": 1.0}}  # fmt: skip
    sl = {"shape": [1, 8, 2], "forward": {"seconds": {"gatedrnn": {"median": 2.0, "min": 1.0},
          "xlstm_vanilla": {"median": 5.0}}, "speedup_vs_xlstm": 2.5}, "train": {"seconds": {
          "gatedrnn": {"median": 1.0}, "xlstm_vanilla": {"median": 3.0}}}}  # fmt: skip
    ml = {
        "shape": [1, 8, 2],
        "seconds": {
            "ours_step_forward": 2.0,
            "ours_parallel_forward": 4.0,
            "xlstm_recurrent_forward": 8.0,
            "xlstm_parallel_forward": 6.0,
            "ours_step_train": 1.0,
            "ours_parallel_train": 1.0,
            "xlstm_recurrent_train": 2.0,
            "xlstm_parallel_train": 5.0,
        },
        "xlstm_over_ours": {"step_vs_recurrent_forward": 4.0},
    }
    cases = [
        ({"speed": [rg]}, {"forward": 3.0, "train": 0.5}),
        ({"speed": [lru]}, {"forward": 3.0, "train": 1.0}),
        ({"speed": [sl]}, {"forward": 2.5, "train": 3.0}),
        ({"speed": {"device": "cpu", "rows": [ml]}}, {"forward": 3.0, "train": 2.0}),
    ]
    for d, want in cases:
        [(shape, got)] = report._speed_rows(d)
        assert shape == (1, 8, 2) and got == pytest.approx(want), (d, got)
    assert report._speed_rows({"cell": "x"}) == []
    assert report._reference({"reference": "xlstm (PyTorch) x", "reference_version": "2"}) == (
        "xlstm",
        "2",
    )
    assert report._reference({"reference": "memax.lru.LRU (memax 0.1.1)"}) == ("memax", "0.1.1")
    assert report._reference({"reference": "rg.RGLRU", "versions": {"rg": "1.0"}}) == ("rg", "1.0")

"""The README's API tour runs as written (other README examples are run by their modules' tests)."""

from __future__ import annotations

from _readme import readme_block


def test_readme_api_tour_runs():
    exec(compile(readme_block("api-tour"), "README.md:api-tour", "exec"), {"__name__": "tour"})

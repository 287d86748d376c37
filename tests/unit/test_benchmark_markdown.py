"""The shared writer of benchmark sections in docs/benchmarks.md."""

from __future__ import annotations

from benchmarks._markdown import replace_section

PAGE = "# Benchmarks\n\n## Aggregation\n\nold table\n\n### Aggregation detail\n\nsubsection text\n\n## Privacy\n\nprivacy\n"


def test_replaces_only_its_section(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(PAGE)

    replace_section(page, "## Aggregation", "new table")

    text = page.read_text()
    assert "## Aggregation\n\nnew table\n\n## Privacy\n\nprivacy\n" in text
    assert "old table" not in text
    assert "subsection text" not in text  # a ### heading belongs to the section above it


def test_body_with_heading_not_repeated(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(PAGE)

    replace_section(page, "## Privacy", "## Privacy\n\nnew privacy")

    assert page.read_text().count("## Privacy") == 1
    assert page.read_text().endswith("## Privacy\n\nnew privacy\n")


def test_appends_missing_section(tmp_path):
    page = tmp_path / "docs" / "benchmarks.md"

    replace_section(page, "## Round overhead", "rounds")

    assert page.read_text() == "# Benchmarks\n\n## Round overhead\n\nrounds\n"

"""The results tables of benchmarks/README.md are the ones results_tables.py writes from the
committed JSON (so no figure there is typed by hand or stale)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import results_tables


def test_the_benchmarks_readme_tables_match_the_results_json(capsys):
    assert results_tables.main(["--check"]) == 0, capsys.readouterr().err
    rendered = results_tables.render()
    assert "_not available" not in rendered, rendered
    assert "| ml100k | sasrec |" in rendered


def test_a_table_is_a_markdown_table():
    table = results_tables.md_table(["a", "b"], [[1, None], ["x", 2.5]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | – |", "| x | 2.5 |"]

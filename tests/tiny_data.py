"""A dataset prepared from a tiny hand-written log, for tests of what reads datasets."""

from pathlib import Path


def prepared_log(root: Path, users: list[str], items: list[str], ts: list[int]) -> Path:
    """A dataset prepared from a tiny log (one event per position), at root/dataset."""
    import polars as pl

    from recstack.datasets.prepare import prepare
    from recstack.datasets.sources.tabular import ColumnMapping

    pl.DataFrame({"u": users, "i": items, "t": ts}).write_csv(root / "log.csv")
    out = root / "dataset"
    prepare(f"csv:{root / 'log.csv'}", out, columns=ColumnMapping("u", "i", "t"), quiet=True)
    return out

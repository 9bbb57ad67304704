"""Tiny prepared datasets for training tests (seconds to train on 2 cores)."""

from pathlib import Path

import polars as pl
import pytest

from recstack.datasets.prepare import prepare
from recstack.datasets.sources.tabular import ColumnMapping

CHAIN_ITEMS = 30
CHAIN_USERS = 40
CHAIN_LENGTH = 12


def write_chain_log(path: Path, users: int = CHAIN_USERS, length: int = CHAIN_LENGTH) -> Path:
    """Users walk a chain of items (i -> i + 1 mod CHAIN_ITEMS) from different starts.

    The next item is a deterministic function of the last one, so a model that fits the data
    reaches HR@10 = 1 on the validation and test targets (which are never seen before).
    """
    rows = []
    for user in range(users):
        start = (user * 7) % CHAIN_ITEMS
        for step in range(length):
            item = (start + step) % CHAIN_ITEMS
            device = ("mobile", "desktop")[user % 2]
            rows.append((f"u{user}", f"i{item}", 1_700_000_000 + 3600 * step + user, device))
    pl.DataFrame(rows, schema=["uid", "iid", "t", "device"], orient="row").write_csv(path)
    return path


@pytest.fixture(scope="session")
def chain_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chain")
    raw = write_chain_log(root / "log.csv")
    out = root / "ds"
    mapping = ColumnMapping(user="uid", item="iid", timestamp="t", context=["device"])
    prepare(source=f"csv:{raw}", out=out, columns=mapping, quiet=True)
    return out

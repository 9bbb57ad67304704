"""Tiny prepared datasets for training tests (seconds to train on 2 cores)."""

from pathlib import Path

import pytest
from chain_log import write_chain_log

from recstack.datasets.prepare import prepare
from recstack.datasets.sources.tabular import ColumnMapping


@pytest.fixture(scope="session")
def chain_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chain")
    raw = write_chain_log(root / "log.csv")
    out = root / "ds"
    mapping = ColumnMapping(user="uid", item="iid", timestamp="t", context=["device"])
    prepare(source=f"csv:{raw}", out=out, columns=mapping, quiet=True)
    return out

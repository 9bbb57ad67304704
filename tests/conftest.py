"""Shared fixtures: the real ML-100K dataset, prepared once per test session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory) -> Path:
    """ML-100K prepared with default settings (grouplens, else the recbole wheel from PyPI).

    The raw download is cached in $RECSTACK_CACHE (or ~/.cache/recstack), so only the first
    run on a machine needs the package registry.
    """
    from recstack.datasets.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "ml-100k"
    prepare(source="ml-100k", out=out, quiet=True)
    return out

"""A synthetic world that shifts: the log a model is trained on, then the events of a changed
world (new items that take over a planted transition), or of pure noise."""

from pathlib import Path

import numpy as np

N_ITEMS, N_NEW = 100, 20
BASE_TS = 1_700_000_000


def old_next(item: int) -> int:
    """The base world's planted successor of item 1..N_ITEMS."""
    return item % N_ITEMS + 1


def new_next(item: int) -> str:
    """After the shift, old item i is followed by new item n<i mod N_NEW>, then by i + 1."""
    return f"n{item % N_NEW}"


def base_log(root: Path, users: int = 400, length: int = 25, seed: int = 0) -> Path:
    """users x length events following old_next with p 0.85 (a random item otherwise), as a
    CSV with columns user, item, ts."""
    import polars as pl

    rng = np.random.default_rng(seed)
    rows = {"user": [], "item": [], "ts": []}
    for user in range(1, users + 1):
        item = int(rng.integers(1, N_ITEMS + 1))
        for step in range(length):
            rows["user"].append(str(user))
            rows["item"].append(str(item))
            rows["ts"].append(BASE_TS + user * 1000 + step)
            item = old_next(item) if rng.random() < 0.85 else int(rng.integers(1, N_ITEMS + 1))
    path = root / "base.csv"
    pl.DataFrame(rows).write_csv(path)
    return path


def shifted_events(users: int, per_user: int, seed: int, noise: bool = False) -> list[dict]:
    """View events after the base log: each user walks the old chain from a random item with
    a new item inserted after each old one (i, n<i>, i+1, n<i+1>, ...), or, with noise, views
    uniformly random old items."""
    rng = np.random.default_rng(seed)
    start = BASE_TS + 10_000_000
    events = []
    for user in range(1, users + 1):
        old = int(rng.integers(1, N_ITEMS + 1))
        for step in range(per_user):
            if noise:
                item = str(int(rng.integers(1, N_ITEMS + 1)))
            elif step % 2 == 0:
                item = str(old)
            else:
                item, old = new_next(old), old_next(old)
            events.append(
                {"user_id": str(user), "item_id": item, "type": "view",
                 "ts": start + user * 100 + step}
            )  # fmt: skip
    return events

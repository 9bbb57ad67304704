"""The chain log: a tiny interaction log whose next item is a function of the last one.

A plain module (not conftest) so test files import it by a name no other test folder uses.
"""

from pathlib import Path

import polars as pl

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

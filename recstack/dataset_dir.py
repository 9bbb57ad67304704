"""Reading a prepared dataset directory: the contract `recstack data prepare` writes, and
training (its data module, the exporters) and serving (the store seed) read."""

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recstack.errors import DataError, first_line
from recstack.manifest import CONTENT_HASH, read_manifest
from recstack.schema import INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE

DATASET_KIND = "dataset"
PARENTS = "parents"  # manifest key of `recstack data extend`: what a version was made from


@dataclass
class PreparedDataset:
    path: Path
    manifest: dict
    interactions: pl.DataFrame  # sorted by (user_idx, ts, raw row order); split_* code columns
    items: pl.DataFrame  # item_idx (1..n_items), item_id, features
    users: pl.DataFrame  # user_idx (0..n_users-1), user_id, attributes

    @property
    def n_users(self) -> int:
        return self.users.height

    @property
    def n_items(self) -> int:
        return self.items.height

    @property
    def base_hash(self) -> str | None:
        """Content hash of the dataset this version extends (`recstack data extend`), or
        None for a prepared one. Every item_idx of the base is kept here (§4)."""
        return ((self.manifest.get(PARENTS) or {}).get("base") or {}).get(CONTENT_HASH)


def _read(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    try:
        return pl.read_parquet(path, columns=columns)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(
            f"cannot read {path}: {first_line(exc)}; re-run `recstack data prepare`"
        ) from None


def load_dataset(
    path: Path | str, columns: list[str] | None = None, verify: bool = True
) -> PreparedDataset:
    """Load a prepared dataset dir; `columns` restricts the interaction columns read.

    verify=True checks every file against the manifest's sha256 (about 1 s per GB).
    """
    path = Path(path)
    manifest = read_manifest(path, DATASET_KIND, verify=verify)
    return PreparedDataset(
        path=path,
        manifest=manifest,
        interactions=_read(path / INTERACTIONS_FILE, columns),
        items=_read(path / ITEMS_FILE),
        users=_read(path / USERS_FILE),
    )

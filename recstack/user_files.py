"""The user rows of a prepared dataset or artifact dir: which files hold them, and whether a
given user is there.

`recstack data forget` (datasets/forget.py) removes those rows; serving reads the same files
to tell a user where their data still is (privacy export and erasure). Every Parquet file a
dir's manifest lists with a user_id or user_idx column counts.
"""

import shlex
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recstack.dataset_dir import DATASET_KIND
from recstack.errors import DataError, first_line
from recstack.manifest import read_manifest
from recstack.schema import USER_ID, USER_IDX

# manifest key: the content hash before any erasure (a dataset keeps its identity, e.g. the
# online store's seed marker, after users are removed from it)
ORIGINAL_HASH = "original_content_hash"


def user_files(directory: Path, manifest: dict) -> dict[str, list[str]]:
    """{file: its user columns} for each Parquet file of the manifest with user_id / user_idx."""
    out = {}
    for name in manifest.get("files", {}):
        if not name.endswith(".parquet"):
            continue
        try:
            names = pq.read_schema(directory / name).names
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read {directory / name}: {first_line(exc)}") from None
        columns = [c for c in (USER_ID, USER_IDX) if c in names]
        if columns:
            out[name] = columns
    return out


def users_present(
    directory: Path, files: dict[str, list[str]], user_ids: list[str]
) -> tuple[set[str], list[int]]:
    """Which of `user_ids` the files hold, and their user_idx (sorted) where a file maps them."""
    present, idx = set(), set()
    for name, columns in files.items():
        if USER_ID not in columns:
            continue
        found = (
            pl.scan_parquet(directory / name)
            .select(pl.col(USER_ID).cast(pl.String), *[c for c in columns if c == USER_IDX])
            .filter(pl.col(USER_ID).is_in(user_ids))
            .collect()
        )
        present |= set(found[USER_ID])
        if USER_IDX in columns:
            idx |= set(found[USER_IDX])
    return present, sorted(idx)


def holds_user(directory: Path | str, kind: str, user_id: str) -> bool:
    """True if a dataset or artifact dir has rows of `user_id` (hashes not re-checked)."""
    directory = Path(directory)
    manifest = read_manifest(directory, kind, verify=False)
    return bool(users_present(directory, user_files(directory, manifest), [str(user_id)])[0])


def forget_hint(kind: str, directory: Path | str, user_id: str) -> str:
    """The command that removes `user_id` from a dir."""
    flag = "--dataset" if kind == DATASET_KIND else "--artifact"
    return (
        f"recstack data forget {flag} {shlex.quote(str(directory))} --user {shlex.quote(user_id)}"
    )

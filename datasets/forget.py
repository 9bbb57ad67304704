"""`recstack data forget`: remove users from prepared datasets and exported artifacts.

    recstack data forget --dataset data/ml-100k --user 42 [--user 43 ...]
    recstack data forget --artifact artifacts/two-tower/v1 --user 42

Every Parquet file a dir's manifest lists with a user_id or user_idx column loses the users'
rows: a dataset's interactions.parquet and users.parquet, a two-tower artifact's
user_features.parquet. user_idx stays dense (0..n_users-1, order kept), so training reads the
dataset as before. The new files and manifest are written beside the old ones (fsynced), then
renamed into place, manifest last; the manifest gets the new hashes, counts and an erasure
ledger entry per user (`erasures`: sha256 of the id and the time, never the id), so
`load_dataset` and the artifact loader verify the result. A crash during those renames leaves
files that readers refuse (hash mismatch): prepare or export that dir again.

A user a dir does not hold is reported as "not present" and the command still succeeds (exit 0):
forgetting is idempotent, and the goal, no rows of the user, holds. A bad dir is a one-line
error (exit 2).
"""

import argparse
import json
import os
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from recstack.artifact_manifest import ARTIFACT_KIND
from recstack.dataset_dir import DATASET_KIND
from recstack.datasets.prepare import vocab_hash
from recstack.durable import fsync_dir
from recstack.errors import DataError
from recstack.event_log_format import user_hash
from recstack.manifest import CONTENT_HASH, content_hash, file_sha256, read_manifest
from recstack.schema import (
    INTERACTIONS_FILE,
    MANIFEST_FILE,
    SPLIT_COLUMNS,
    SPLIT_NAMES,
    USER_ID,
    USER_IDX,
    USERS_FILE,
)
from recstack.user_files import ORIGINAL_HASH, user_files, users_present

ERASURES = "erasures"  # manifest key: the erasure ledger, [{"user_hash", "erased_at"}]
TMP = ".forget-tmp"


def forget_command(user_ids: list[str], datasets: list[Path], artifacts: list[Path]) -> None:
    """Remove the users from each dir and print one line per dir (what was removed)."""
    if not user_ids or not (datasets or artifacts):
        raise DataError("name at least one --user and one --dataset or --artifact dir")
    for kind, dirs in ((DATASET_KIND, datasets), (ARTIFACT_KIND, artifacts)):
        for directory in dirs:
            removed = forget_users(directory, kind, user_ids)
            absent = sorted(set(user_ids) - set(removed["users"]))
            if removed["users"]:
                rows = ", ".join(f"{n} of {name}" for name, n in removed["rows"].items() if n)
                print(f"{directory}: removed user(s) {', '.join(removed['users'])}: row(s) {rows}")
            if absent:
                print(f"{directory}: user(s) {', '.join(absent)} not present")


def forget_users(directory: Path | str, kind: str, user_ids: list[str]) -> dict:
    """Remove the users' rows from a dataset or artifact dir (see the module docstring).

    Returns {"users": the ids that were there, sorted, "rows": {file: rows removed}}; a dir
    holding none of them is left untouched (no ledger entry either).
    """
    directory = Path(directory)
    manifest = read_manifest(directory, kind)  # every hash checked before anything changes
    files = user_files(directory, manifest)
    present, erased_idx = users_present(directory, files, [str(u) for u in user_ids])
    if not present:
        return {"users": [], "rows": {}}
    rows, staged = {}, {}
    try:
        for name, columns in files.items():
            path = directory / name
            drop = pl.lit(False)
            if USER_ID in columns:
                drop = drop | pl.col(USER_ID).cast(pl.String).is_in(sorted(present))
            frame = pl.scan_parquet(path)
            if USER_IDX in columns and erased_idx:
                erased = pl.Series(erased_idx, dtype=pl.Int64)
                dense = pl.col(USER_IDX) - pl.lit(erased).search_sorted(pl.col(USER_IDX))
                drop = drop | pl.col(USER_IDX).is_in(erased.implode())
                frame = frame.filter(~drop).with_columns(dense.cast(pl.Int32).alias(USER_IDX))
            else:
                frame = frame.filter(~drop)
            staged[name] = _staged_write(frame, path)
            rows[name] = pq.read_metadata(path).num_rows - pq.read_metadata(staged[name]).num_rows
        manifest = _updated_manifest(manifest, staged, present, kind)
        staged[MANIFEST_FILE] = directory / f".{MANIFEST_FILE}{TMP}"
        _write_durably(staged[MANIFEST_FILE], json.dumps(manifest, indent=2, default=str) + "\n")
        for name, tmp in staged.items():  # data files first, the manifest last
            os.replace(tmp, directory / name)
        fsync_dir(directory)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return {"users": sorted(present), "rows": rows}


# --------------------------------------------------------------------------- internals


def _updated_manifest(manifest: dict, staged: dict[str, Path], users: set[str], kind: str) -> dict:
    """New file hashes, content hash, counts and ledger."""
    manifest = dict(manifest)
    manifest.setdefault(ORIGINAL_HASH, manifest[CONTENT_HASH])  # the seed marker stays
    files = dict(manifest["files"]) | {name: file_sha256(tmp) for name, tmp in staged.items()}
    manifest["files"] = files
    manifest[CONTENT_HASH] = content_hash(files)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest[ERASURES] = [
        *manifest.get(ERASURES, []),
        *({"user_hash": user_hash(u), "erased_at": now} for u in sorted(users)),
    ]
    if kind == DATASET_KIND and {USERS_FILE, INTERACTIONS_FILE} <= set(staged):
        _recount(manifest, staged[USERS_FILE], staged[INTERACTIONS_FILE])
    return manifest


def _recount(manifest: dict, users: Path, interactions: Path) -> None:
    """A dataset manifest's user and interaction counts, user vocab hash and split counts."""
    ids = pl.read_parquet(users, columns=[USER_IDX, USER_ID]).sort(USER_IDX)[USER_ID]
    counts = manifest.setdefault("counts", {})
    counts["users"], counts["interactions"] = len(ids), pq.read_metadata(interactions).num_rows
    if "users" in manifest.get("vocab", {}):
        manifest["vocab"]["users"]["sha256"] = vocab_hash(ids)
    split_columns = [c for c in SPLIT_COLUMNS if c in pq.read_schema(interactions).names]
    if "counts" in manifest.get("splits", {}) and split_columns:
        frame = pl.read_parquet(interactions, columns=split_columns)
        manifest["splits"]["counts"] = {
            column: {name: int((frame[column] == code).sum()) for code, name in SPLIT_NAMES.items()}
            for column in split_columns
        }


def _staged_write(frame: pl.LazyFrame, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}{TMP}")
    frame.sink_parquet(tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    return tmp


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def forget_cli(argv: list[str]) -> None:
    """`recstack data forget` (its own parser: --user, --dataset and --artifact repeat)."""
    parser = argparse.ArgumentParser(
        prog="recstack data forget",
        description="Remove users' rows from prepared datasets and artifacts' user features; "
        "record the erasure (hashed id, time) in each manifest. A user a dir does not hold is "
        "reported as not present (exit 0).",
    )
    parser.add_argument("--user", action="append", default=[], help="user id (repeatable)")
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        type=Path,
        help="prepared dataset dir (repeatable)",
    )
    parser.add_argument(
        "--artifact",
        action="append",
        default=[],
        type=Path,
        help="artifact dir: its user_features.parquet (repeatable)",
    )
    args = parser.parse_args(argv)
    forget_command(args.user, args.dataset, args.artifact)

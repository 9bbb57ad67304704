"""Forged artifact dirs for the refusal tests: a change applied to a copy of a good artifact,
then the manifest's file hashes rewritten to match, so only the checks behind the hashes can
catch what the change did (a malicious or buggy exporter, not a damaged file)."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from recstack.manifest import file_sha256
from recstack.schema import ITEMS_FILE, MANIFEST_FILE


def copy_with_hashes(src: Path, dst: Path, change: Callable[[Path], None] | None = None) -> Path:
    shutil.copytree(src, dst)
    if change:
        change(dst)
    manifest = json.loads((dst / MANIFEST_FILE).read_text())
    manifest["files"] = {
        name: file_sha256(dst / name) for name in manifest["files"] if (dst / name).exists()
    }
    (dst / MANIFEST_FILE).write_text(json.dumps(manifest))
    return dst


def _embeddings(dst: Path) -> Path:
    return dst / json.loads((dst / MANIFEST_FILE).read_text())["item_embeddings"]["file"]


def _garbage_npy(dst: Path) -> None:
    _embeddings(dst).write_bytes(b"\x93NUMPY garbage " * 100)


def _pickled_npy(dst: Path) -> None:
    np.save(_embeddings(dst), np.array([{"run": "os.system"}], dtype=object), allow_pickle=True)


def _bad_parquet(dst: Path) -> None:
    (dst / ITEMS_FILE).write_bytes(b"PAR1 not really parquet PAR1")


def _edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(dst: Path) -> None:
        manifest = json.loads((dst / MANIFEST_FILE).read_text())
        change(manifest)
        (dst / MANIFEST_FILE).write_text(json.dumps(manifest))

    return edit


def _nan_embeddings(dst: Path) -> None:
    path = _embeddings(dst)
    vectors = np.load(path)
    vectors[5] = np.nan
    np.save(path, vectors)


def _int_embeddings(dst: Path) -> None:
    path = _embeddings(dst)
    np.save(path, np.load(path).astype(np.int64))


# name -> (change, what the one-line refusal says)
FORGERIES: dict[str, tuple[Callable[[Path], None], str]] = {
    "garbage_npy": (_garbage_npy, "cannot read"),
    "pickled_npy": (_pickled_npy, "cannot read"),
    "bad_parquet": (_bad_parquet, "as Parquet"),
    "no_dim": (_edit_manifest(lambda m: m.pop("dim")), "lacks 'dim'"),
    "zero_window": (
        _edit_manifest(lambda m: m.update(history_len=0)),
        "has history_len = 0: input should be greater than 0",
    ),
    "unknown_model_kind": (
        _edit_manifest(lambda m: m.update(model_kind="gru4rec")),
        "has model_kind = 'gru4rec'",
    ),
    "outputs_not_the_graphs": (  # e.g. a transition term the graph does not compute
        _edit_manifest(lambda m: m["onnx"]["outputs"].update(bonus=["batch", 4, "float32"])),
        "differ from the manifest's",
    ),
    "nan_embeddings": (_nan_embeddings, "NaN or infinite"),
    "int_embeddings": (_int_embeddings, "not numbers of kind"),
}

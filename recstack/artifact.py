"""Load an artifact dir written by `recstack export`, with no torch: onnxruntime + numpy only.

An artifact (docs/architecture.md §7) holds an ONNX model that turns a history into one query
vector and the item embeddings that vector is scored against:

    sasrec:    sasrec.onnx      items [B, L], lengths [B] (>= 1)             -> state [B, d]
    two_tower: user_tower.onnx  history [B, L], lengths [B] (>= 0), context  -> user_vec [B, d]
                                [B, C], user [B, U] (inputs listed in the manifest)
    both:      item_embeddings.npy [n_items + 1, d]; score(item) = query . embedding[item_idx]
    optional:  item_index.faiss + ann_queries.npy, the ANN index of the manifest's "ann"
               block (large catalogues); `item_index.AnnIndex.load` reads and re-checks it

The manifest is read through `recstack.artifact_manifest`, the type export writes it with.
`load_artifact` refuses a missing or corrupt dir (manifest hashes), a malformed manifest, a file
that does not load (no pickle: arrays are read with allow_pickle=False), arrays of the wrong
dtype or shape or with NaN / infinite values, a model kind the side does not serve, or an ONNX
input layout it does not know, each with a message that says what to do. `query.check_scores`
then runs the model once on sample inputs before the artifact may serve.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl

from recstack.artifact_manifest import ArtifactManifest, ModelKind, read_artifact_manifest
from recstack.errors import DataError
from recstack.schema import ITEM_ID, ITEM_IDX, ITEMS_FILE, PAD_IDX, TITLE, USER_ID


def providers() -> list[str]:
    """CUDA when this onnxruntime build has it, CPU otherwise."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


@dataclass(frozen=True)
class SessionSettings:
    """onnxruntime threading of the sessions this process loads.

    intra_op_threads: threads per ONNX run; match the replica's CPUs (1 where replicas or
        workers each own one core: a replica per core scales better than threads).
    spinning: let idle pool threads spin for work. Off where replicas share cores: a spinning
        thread burns the CPU another replica needs.
    """

    intra_op_threads: int = 1
    spinning: bool = False


_SETTINGS = SessionSettings()


def use_session_settings(settings: SessionSettings) -> None:
    """Set the onnxruntime settings of every session this process loads from now on (called
    once at replica / worker start, from the serve config's `onnxruntime` section)."""
    global _SETTINGS
    _SETTINGS = settings


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = _SETTINGS.intra_op_threads
    options.inter_op_num_threads = 1
    spin = "1" if _SETTINGS.spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers())
    except Exception as exc:  # onnxruntime raises its own exception types
        raise DataError(f"cannot load ONNX model {path}: {exc}; re-export the artifact") from None


@dataclass
class Catalog:
    """The item vocabulary of an artifact: item_idx <-> item_id, titles, popularity."""

    item_ids: list[str]  # [n_items + 1], index = item_idx, entry PAD_IDX = ""
    titles: list[str]
    popularity: np.ndarray  # float64 [n_items + 1]: events per item, PAD = 0
    index: dict[str, int] = field(repr=False)  # item_id -> item_idx
    vocab_hash: str = ""  # the dataset hash the vocab came from

    @classmethod
    def load(cls, path: Path, manifest: ArtifactManifest) -> "Catalog":
        items = read_parquet(path / ITEMS_FILE)
        missing = {ITEM_IDX, ITEM_ID} - set(items.columns)
        if missing:
            raise DataError(f"{path / ITEMS_FILE} lacks column(s) {sorted(missing)}; re-export")
        items = items.sort(ITEM_IDX)
        n_items = items.height
        if items[ITEM_IDX].to_list() != list(range(1, n_items + 1)):
            raise DataError(f"{path / ITEMS_FILE} does not hold item_idx 1..{n_items}")
        item_ids = ["", *items[ITEM_ID].cast(pl.String).to_list()]
        titles = ["", *items[TITLE].fill_null("").to_list()] if TITLE in items.columns else []
        popularity = read_array(path / manifest.popularity.file, "fiu")
        if popularity.shape != (n_items + 1,) or (popularity < 0).any():
            raise DataError(
                f"{path}: popularity has shape {popularity.shape}, not [{n_items + 1}], or "
                "negative counts; re-export the artifact"
            )
        return cls(
            item_ids=item_ids,
            titles=titles or [""] * (n_items + 1),
            popularity=popularity.astype(np.float64),
            index={item_id: idx for idx, item_id in enumerate(item_ids) if idx != PAD_IDX},
            vocab_hash=str(manifest.vocab.dataset_hash),
        )

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    def to_idx(self, item_ids: list[str]) -> tuple[list[int], int]:
        """External ids -> item_idx; unknown ids are dropped and counted."""
        lookup = self.index.get
        known = [idx for idx in map(lookup, item_ids) if idx is not None]  # one lookup per id
        return known, len(item_ids) - len(known)

    def last_known(self, item_ids: list[str], n: int) -> list[int]:
        """The item_idx of the last n known ids, in order: all a model reads of a history
        (`history_len`), without looking up the older ids (a lookup in a 1M-entry vocab is a
        cache miss)."""
        lookup, found = self.index.get, []
        for item_id in reversed(item_ids):
            if len(found) == n:
                break
            if (idx := lookup(item_id)) is not None:
                found.append(idx)
        return found[::-1]


def artifact_version(path: Path, content_hash: str) -> str:
    """What a replica reports serving: `<name>/<version>` from the dir layout plus the content
    hash prefix."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}@{content_hash[:8]}"


@dataclass
class Artifact:
    """One exported model, ready to encode histories into query vectors."""

    path: Path
    manifest: ArtifactManifest
    kind: ModelKind
    session: ort.InferenceSession
    input_names: list[str]
    output_name: str
    item_embeddings: np.ndarray  # float32 [n_items + 1, d]
    history_len: int  # longest history the model reads
    catalog: Catalog
    features: dict | None = None  # two-tower: features.json
    user_codes: dict[str, np.ndarray] | None = None  # two-tower: user_id -> codes [U]

    @property
    def version(self) -> str:
        return artifact_version(self.path, self.manifest.content_hash)

    @property
    def dim(self) -> int:
        return int(self.item_embeddings.shape[1])

    @property
    def followers(self) -> int:
        """Width of SASRec's transition term (its extra ONNX outputs); 0 without one."""
        return self.manifest.followers or 0


def read_array(path: Path, dtype_kinds: str = "f") -> np.ndarray:
    """An artifact's .npy array: no pickle, a numeric dtype of `dtype_kinds` (numpy kind codes),
    every value finite. Anything else is a DataError naming the file."""
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:  # missing, truncated, not .npy, pickled
        raise DataError(f"cannot read {path} ({exc}); re-export the artifact") from None
    if array.dtype.kind not in dtype_kinds:
        raise DataError(f"{path} holds {array.dtype}, not numbers of kind {dtype_kinds!r}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"{path} holds NaN or infinite values; re-train or re-export the model")
    return np.asarray(array)


def read_parquet(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises its own types for a file that is not Parquet
        raise DataError(f"cannot read {path} as Parquet ({exc}); re-export the artifact") from None


def _check_graph(
    path: Path, session: ort.InferenceSession, manifest: ArtifactManifest
) -> list[str]:
    """The ONNX graph's input and output names must be the manifest's, in order; -> inputs."""
    found = {
        "inputs": [i.name for i in session.get_inputs()],
        "outputs": [o.name for o in session.get_outputs()],
    }
    for side, names in found.items():
        declared = list(getattr(manifest.onnx, side))
        if names != declared:
            raise DataError(
                f"{path}: ONNX {side} {names} differ from the manifest's {declared}; re-export"
            )
    return found["inputs"]


def _user_codes(path: Path, manifest: ArtifactManifest) -> dict[str, np.ndarray]:
    if manifest.user_features is None:
        return {}
    file = manifest.user_features.file
    frame = read_parquet(path / file)
    if USER_ID not in frame.columns or not all(t.is_integer() for t in frame.drop(USER_ID).dtypes):
        raise DataError(f"{path / file}: needs {USER_ID} and integer code columns; re-export")
    ids = frame[USER_ID].cast(pl.String).to_list()
    codes = frame.drop(USER_ID).to_numpy().astype(np.int64)  # [n_users, U]
    return dict(zip(ids, codes, strict=True))


def load_artifact(path: Path, kinds: tuple[ModelKind, ...] = tuple(ModelKind)) -> Artifact:
    """Verify (manifest hashes) and load an artifact dir of one of `kinds`; every file is read
    and checked (dtype, shape, finite values). DataError says what is wrong."""
    path = Path(path)
    manifest = read_artifact_manifest(path)  # hashes and fields checked
    kind = manifest.model_kind
    if kind not in kinds:
        raise DataError(
            f"{path}: a {kind.value!r} model, where this side serves {' or '.join(kinds)}"
        )
    try:
        session = _session(path / manifest.onnx.file)
        embeddings = read_array(path / manifest.item_embeddings.file).astype(np.float32)
        catalog = Catalog.load(path, manifest)
        features = None
        if kind == ModelKind.TWO_TOWER:
            if manifest.features is None:
                raise DataError(f"{path}/manifest.json lacks 'features'; re-export the artifact")
            features = json.loads((path / manifest.features.file).read_text())
        input_names = _check_graph(path, session, manifest)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read a file ({exc}); re-export the artifact") from None
    if embeddings.shape != (catalog.n_items + 1, manifest.dim):
        raise DataError(
            f"{path}: item embeddings {embeddings.shape} do not match {catalog.n_items} items "
            f"x dim {manifest.dim}; re-export the artifact"
        )
    return Artifact(
        path=path,
        manifest=manifest,
        kind=kind,
        session=session,
        input_names=input_names,
        output_name=session.get_outputs()[0].name,
        item_embeddings=embeddings,
        history_len=manifest.history_len,
        catalog=catalog,
        features=features,
        user_codes=_user_codes(path, manifest) if kind == ModelKind.TWO_TOWER else None,
    )


def check_same_vocab(retriever: Artifact, ranker: Artifact) -> None:
    """Retriever and ranker must index the same catalogue, or candidates mean other items."""
    if retriever.catalog.item_ids != ranker.catalog.item_ids:
        raise DataError(
            f"retriever {retriever.path} and ranker {ranker.path} have different item "
            f"vocabularies (datasets {retriever.catalog.vocab_hash[:12]} vs "
            f"{ranker.catalog.vocab_hash[:12]}); export both from runs on the same dataset"
        )

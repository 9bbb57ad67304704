"""The artifact contract: the manifest.json that `recstack export` writes and serving reads.

`ArtifactManifest` is the one type of that file. The model's exporter (SASRec or two-tower)
fills the fields of `ExportedModel` (its ONNX graphs, embeddings, dims, history window,
parity); `recstack export` adds the item vocab, popularity, the training run's figures and the
optional ANN index, and `write_artifact_manifest` hashes the files and writes them together.
Serving reads the manifest only through `read_artifact_manifest`, which refuses a malformed
one in one line. torch-free: both sides import it.
"""

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recstack.data_profile import DataProfile
from recstack.errors import DataError
from recstack.manifest import read_manifest, write_manifest
from recstack.schema import MANIFEST_FILE

ARTIFACT_KIND = "artifact"  # the manifest kind of an artifact dir
EMBEDDINGS_FILE = "item_embeddings.npy"  # float32 [n_items + 1, d], row PAD_IDX unused
# SASRec's transition term: the ONNX outputs after the state, [B, followers] each: the items
# that followed the history's last item (int64, PAD_IDX unused) and the logit each adds
TRANSITION_OUTPUTS = ("followers", "bonus")


class ModelKind(StrEnum):
    SASREC = "sasrec"  # next-item transformer: ranks, retrieves and finds similar items
    TWO_TOWER = "two_tower"  # user and item towers: retrieves


Positive = Annotated[int, Field(strict=True, gt=0)]  # an int, not a float or bool
Count = Annotated[int, Field(strict=True, ge=0)]
Shape = list[str | int]  # per dim a name (dynamic) or a size, then the dtype


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxGraph(_Block):
    file: str
    opset: Positive
    inputs: dict[str, Shape]  # in the graph's input order
    outputs: dict[str, Shape]
    columns: dict[str, list[str]] | None = None  # two-tower user tower: context/user columns


class ArrayFile(_Block):
    file: str
    shape: list[Count]


class FileRef(_Block):
    file: str


class UserFeatures(_Block):
    file: str
    key: str  # the user id column
    columns: list[str]  # code columns, in the order of the user tower's `user` input


class Parity(_Block):
    """onnxruntime vs torch: the worst |difference| and each checked shape."""

    max_abs_diff: float
    atol: float
    checks: list[dict[str, str | int | float]]


class Vocab(_Block):
    file: str  # items.parquet, copied from the dataset
    dataset_hash: str | None  # the dataset manifest's content hash


class Popularity(_Block):
    file: str
    shape: list[Count]  # [n_items + 1]
    of: str  # which events were counted


class TrainingRun(_Block):
    checkpoint: str
    seed: int | None
    valid: dict[str, float] | None  # the run's metrics.json figures
    test: dict[str, float] | None


class AnnIndexSpec(_Block):
    """The ANN index built at export (training/export/ann_index.py), re-checked at load."""

    kind: str  # faiss_ivf_sq8 (faiss_ivf_flat from earlier exports) or faiss_pq_fastscan
    metric: Literal["inner_product", "cosine"]
    n_items: Count
    dim: Positive
    nlist: Positive | None = None  # IVF
    nprobe: Positive | None = None  # IVF
    pq_m: Positive | None = None  # PQ fast-scan: sub-quantisers of 4 bits
    refine: Positive = 1  # candidates re-scored exactly per item wanted
    recall_at_100: float
    recall_k: Positive
    recall_by_nprobe: dict[str, float] | None = None  # earlier exports
    tried: list[dict] = []  # each candidate: setting, recall, batch-1 search ms
    target_recall: float
    queries: Positive
    query_source: str
    train_vectors: Positive
    build_s: float
    index_mib: float
    file: str
    queries_file: str
    faiss_version: str


class Erasure(_Block):
    user_hash: str
    erased_at: str


class ExportedModel(_Block):
    """What a model's exporter writes: its files and the facts serving needs to run them."""

    model_kind: ModelKind
    onnx: OnnxGraph  # the graph that turns a history into a query vector
    item_tower: OnnxGraph | None = None  # two-tower
    item_embeddings: ArrayFile
    features: FileRef | None = None  # two-tower: features.json
    user_features: UserFeatures | None = None  # two-tower
    dim: Positive
    n_items: Count
    history_len: Positive  # the longest history the model reads
    followers: Positive | None = None  # SASRec's transition term: its outputs' width (absent: none)
    similarity: str | None = None  # two-tower
    temperature: float | None = None  # two-tower
    parity: Parity


class ArtifactManifest(ExportedModel):
    """An artifact dir's manifest.json: the stage header, the model, and the export's own."""

    schema_version: int
    kind: Literal["artifact"]
    created_at: str
    code_version: str
    files: dict[str, str]  # name -> sha256
    content_hash: str
    vocab: Vocab
    popularity: Popularity
    training: TrainingRun
    torch_version: str
    ann: AnnIndexSpec | None = None  # large catalogues
    # the training data's histograms that `recstack monitor` compares traffic with
    # (recstack/data_profile.py); absent in artifacts exported before it existed
    profile: DataProfile | None = None
    original_content_hash: str | None = None  # `recstack data forget`: before any erasure
    erasures: list[Erasure] | None = None  # `recstack data forget`: the ledger


def write_artifact_manifest(
    directory: Path,
    model: ExportedModel,
    vocab: Vocab,
    popularity: Popularity,
    training: TrainingRun,
    torch_version: str,
    ann: AnnIndexSpec | None = None,
    profile: DataProfile | None = None,
) -> ArtifactManifest:
    """Hash the files in `directory` and write its manifest.json; returns it, checked."""
    parts = {"vocab": vocab, "popularity": popularity, "training": training, "ann": ann}
    parts |= {"profile": profile}
    fields = model.model_dump(mode="json", exclude_none=True)
    fields |= {k: v.model_dump(mode="json") for k, v in parts.items() if v is not None}
    written = write_manifest(directory, ARTIFACT_KIND, **fields, torch_version=torch_version)
    return ArtifactManifest.model_validate(written)


def _problem(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"lacks {where!r}"
    value = repr(error["input"])
    value = value if len(value) <= 40 else value[:37] + "..."
    return f"has {where} = {value}: {error['msg'].lower()}"


def _from_earlier_layout(raw: dict) -> dict:
    """An artifact exported before the history window got its one name: `onnx.max_length`
    then, `history_len` now (the files are the same, so it serves unchanged)."""
    onnx = raw.get("onnx")
    if "history_len" not in raw and isinstance(onnx, dict) and "max_length" in onnx:
        onnx = {k: v for k, v in onnx.items() if k != "max_length"}
        return {**raw, "onnx": onnx, "history_len": raw["onnx"]["max_length"]}
    return raw


def read_artifact_manifest(directory: Path, verify: bool = True) -> ArtifactManifest:
    """An artifact dir's manifest, its file hashes checked when `verify`; DataError in one
    line for a missing, corrupt or malformed one."""
    raw = _from_earlier_layout(read_manifest(directory, ARTIFACT_KIND, verify))
    try:
        return ArtifactManifest.model_validate(raw)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "missing")  # missing first
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataError(
            f"{Path(directory) / MANIFEST_FILE} {_problem(errors[0])}{more}; re-export the artifact"
        ) from None

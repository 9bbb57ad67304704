"""`recstack export`: a training checkpoint -> an artifact dir for serving.

    recstack export --ckpt runs/sasrec-ml100k/checkpoints/best.ckpt --out artifacts/sasrec-ml100k/v1

Everything comes from the checkpoint and its run dir (<run>/checkpoints/<name>.ckpt): the task
class and the dataset from <run>/config.yaml, the figures from <run>/metrics.json. `--dataset
DIR` names the dataset where it has moved since training; it must be the one the run trained on
(same content hash).

The task class picks the model files: SASRec (NextItemTask) -> sasrec.onnx (sasrec_onnx.py);
two-tower (RetrievalTask) -> user_tower.onnx, item_tower.onnx, features.json and
user_features.parquet (two_tower_onnx.py). Every artifact dir also holds the item embeddings,
the dataset's item vocab (items.parquet: item_id <-> item_idx, titles and features), the
popularity of every item (popularity.npy: events per item over the whole log) and
manifest.json (`recstack.artifact_manifest.ArtifactManifest`: model kind, ONNX input/output
names and shapes, opset, dims, history window, the parity check's figures, the run's
validation and test metrics, the dataset's manifest hash, the data's profile for `recstack
monitor`, sha256 of every file). It is written to a temp dir and renamed, so a failed export
leaves nothing behind.

Large catalogues (`--ann auto`: more than 100,000 items; `on` / `off` force it) also get an
ANN index (ann_index.py): item_index.faiss and its sample queries ann_queries.npy, with the
manifest's "ann" block (the kind chosen, its setting, measured recall@100, build time). A
two-tower index serves retrieval (inner product, queries from the exported user tower on the
dataset's histories); a SASRec index serves similar items (cosine, queries are popular items).

torch, Lightning and the ONNX exporters are imported by the functions that use them, not by
this module: `recstack --help` builds every command's parser from its signature, and loading
them there took seconds.
"""

import importlib
import json
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import yaml

from recstack.artifact import load_artifact
from recstack.artifact_manifest import (
    AnnIndexSpec,
    ArtifactManifest,
    ExportedModel,
    ModelKind,
    Popularity,
    TrainingRun,
    Vocab,
    read_artifact_manifest,
    write_artifact_manifest,
)
from recstack.data_profile import dataset_profile
from recstack.dataset_dir import PreparedDataset, load_dataset
from recstack.errors import DataError, RecstackError, first_line
from recstack.item_index import unit_rows
from recstack.manifest import CONTENT_HASH
from recstack.schema import ITEM_IDX, ITEMS_FILE
from recstack.training.export.ann_index import AnnMode, build_ann, wants_ann
from recstack.training.export.ann_queries import item_queries, user_tower_queries
from recstack.user_files import ORIGINAL_HASH

RUN_CONFIG = "config.yaml"  # the resolved training config `recstack train` saves in the run dir
POPULARITY_FILE = "popularity.npy"  # float64 [n_items + 1]: events per item_idx, PAD = 0
EXPORTABLE = ("NextItemTask", "RetrievalTask")  # task classes with an exporter
N_QUERIES = 256  # sample queries the ANN index is checked on (at export and at every load)


def _run_config(run_dir: Path) -> dict:
    """The resolved training config `recstack train` saved in the run dir."""
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise RecstackError(
            f"{path} is missing: export needs the run dir that `recstack train` wrote, with "
            "the checkpoint in its checkpoints/"
        )
    return yaml.safe_load(path.read_text())


def _dataset(run_dir: Path, config: dict, metrics: dict, dataset: Path | None) -> PreparedDataset:
    """The dataset the run trained on: `dataset` when given, else the one its config names."""
    named = dataset or (config.get("data") or {}).get("dataset")
    where = f"--dataset {dataset}" if dataset else f"{run_dir / RUN_CONFIG} (data.dataset)"
    if not named:
        raise RecstackError(f"{where} names no dataset; pass --dataset DIR")
    try:
        data = load_dataset(named, columns=[ITEM_IDX])
    except DataError as exc:
        raise DataError(
            f"cannot load the run's dataset from {where}: {first_line(exc)}; pass --dataset DIR "
            "with the dataset the run trained on"
        ) from None
    trained_on = metrics.get("manifest_hash")
    hashes = {data.manifest.get(CONTENT_HASH), data.manifest.get(ORIGINAL_HASH)}
    if trained_on and trained_on not in hashes:
        raise DataError(
            f"{data.path} (from {where}) is not the dataset the run trained on: content hash "
            f"{data.manifest.get(CONTENT_HASH, '')[:12]}, the run's {trained_on[:12]}; pass "
            "--dataset DIR with that dataset"
        )
    return data


def _load_task(ckpt: Path, class_path: str):
    module, _, name = class_path.rpartition(".")
    task_class = getattr(importlib.import_module(module), name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # weights only: tensors and plain containers, never arbitrary pickled objects
            return task_class.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RecstackError(
            f"cannot load checkpoint {ckpt}: it holds objects other than tensors and plain "
            "values (recstack loads weights only); export a checkpoint `recstack train` wrote"
        ) from None
    except (RuntimeError, KeyError, EOFError, ValueError) as exc:
        raise RecstackError(f"cannot load checkpoint {ckpt}: {first_line(exc)}") from None


def _model_files(task, data, staging: Path) -> ExportedModel:
    """Write the model's own files into `staging`; returns its manifest fields."""
    from recstack.training.tasks.next_item import NextItemTask
    from recstack.training.tasks.retrieval import RetrievalTask

    if isinstance(task, RetrievalTask):
        from recstack.training.data.features import FeatureVocab
        from recstack.training.export.two_tower_onnx import export_two_tower

        return export_two_tower(task.scoring_net, FeatureVocab(**task.vocab), data, staging)
    if isinstance(task, NextItemTask):
        from recstack.training.export.sasrec_onnx import export_sasrec

        return export_sasrec(task.scoring_net, staging)
    raise RecstackError(f"no exporter for {type(task).__name__} (exportable: {EXPORTABLE})")


def _ann_files(staging: Path, data: PreparedDataset, nlist: int | None) -> AnnIndexSpec:
    """Build the ANN index of the artifact in `staging` (manifest written); its "ann" block."""
    artifact = load_artifact(staging)  # what serving will load: its encoder makes the queries
    if artifact.kind == ModelKind.TWO_TOWER:
        queries = user_tower_queries(artifact, data, N_QUERIES)
        source = "user tower on the dataset's histories (users drawn uniformly)"
        block = build_ann(
            artifact.item_embeddings, queries, "inner_product", nlist, staging, source
        )
    else:
        unit = unit_rows(artifact.item_embeddings)
        queries = item_queries(unit, artifact.catalog.popularity, N_QUERIES)
        source = "unit item vectors (items drawn by popularity)"
        block = build_ann(unit, queries, "cosine", nlist, staging, source)
    return AnnIndexSpec(**block)


def export(
    ckpt: Path,
    out: Path,
    overwrite: bool = False,
    ann: AnnMode = "auto",
    ann_nlist: int | None = None,
    dataset: Path | None = None,
) -> Path:
    """Export a trained model to an artifact dir for serving.

    Args:
        ckpt: checkpoint of a `recstack train` run (e.g. <run>/checkpoints/best.ckpt).
        out: artifact dir to create (e.g. artifacts/<name>/<version>).
        overwrite: replace `out` if it exists.
        ann: build the ANN index: auto (catalogues above 100,000 items), on or off.
        ann_nlist: IVF lists of the ANN index (default about 4 sqrt(items)).
        dataset: the prepared dataset the run trained on (default: the one the run's
            config.yaml names; give it when that dataset has moved).
    """
    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_file():
        raise RecstackError(f"checkpoint {ckpt} does not exist (see <run>/checkpoints/)")
    if out.exists() and not overwrite:
        raise RecstackError(f"{out} exists; choose a new version dir or pass --overwrite true")
    run_dir = ckpt.parent.parent  # <run>/checkpoints/<name>.ckpt
    config = _run_config(run_dir)
    class_path = config["model"]["class_path"]
    if class_path.rpartition(".")[2] not in EXPORTABLE:
        raise RecstackError(
            f"export of {class_path.rpartition('.')[2]} is not built yet; SASRec "
            "(NextItemTask) and two-tower (RetrievalTask) checkpoints export"
        )
    import torch  # here, after the checks of the arguments: seconds to load

    from recstack.training.eval.baselines import item_counts
    from recstack.training.run_report import METRICS_FILE

    metrics_path = run_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    data = _dataset(run_dir, config, metrics, dataset)
    with_ann = wants_ann(ann, data.n_items)
    task = _load_task(ckpt, class_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model = _model_files(task, data, staging)
        shutil.copy2(data.path / ITEMS_FILE, staging / ITEMS_FILE)
        # events per item over the whole log: the popularity control arm and the fallbacks
        np.save(staging / POPULARITY_FILE, item_counts(data.interactions, data.n_items))
        fields = {
            "vocab": Vocab(file=ITEMS_FILE, dataset_hash=data.manifest.get(CONTENT_HASH)),
            "popularity": Popularity(
                file=POPULARITY_FILE, shape=[data.n_items + 1], of="all events"
            ),
            "training": TrainingRun(
                checkpoint=str(ckpt),
                seed=config.get("seed_everything"),
                valid=metrics.get("valid"),
                test=metrics.get("test"),
            ),
            "torch_version": torch.__version__,
            # the training data's histograms for `recstack monitor` (from the dataset manifest,
            # or computed when it predates them)
            "profile": dataset_profile(data.path, data.manifest, data.n_items),
        }
        write_artifact_manifest(staging, model, **fields)
        if with_ann:  # the index's files join the artifact: hash them all again
            index = _ann_files(staging, data, ann_nlist)
            write_artifact_manifest(staging, model, **fields, ann=index)
        if out.exists():
            shutil.rmtree(out)
        staging.chmod(0o755)  # mkdtemp makes it private
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(_summary(read_artifact_manifest(out), out))  # as serving reads it: hashes checked
    return out


def _ann_setting(index: AnnIndexSpec) -> str:
    if index.nlist is not None:
        return f"{index.kind} nlist {index.nlist}, nprobe {index.nprobe}"
    return f"{index.kind} {index.pq_m} sub-quantisers, refine {index.refine}"


def _summary(manifest: ArtifactManifest, out: Path) -> str:
    parity = manifest.parity
    summary = (
        f"exported {manifest.model_kind} to {out}: parity max |onnx - torch| = "
        f"{parity.max_abs_diff:.1e} over {len(parity.checks)} shapes"
    )
    if index := manifest.ann:
        summary += (
            f"; ANN index {_ann_setting(index)}, recall@100 "
            f"{index.recall_at_100:.3f}, built in {index.build_s:.1f} s"
        )
    return summary

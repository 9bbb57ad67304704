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


def build_artifact(root: Path, dataset: Path, task: str, model: dict, batches: int = 2) -> Path:
    """`task` with `model` trained for `batches` steps on `dataset` (2: nearly its random init),
    then exported by `recstack export` to root/artifacts/<name>/v1: a valid artifact in the
    time of the ONNX export (about 10 s a graph), not of training."""
    import yaml

    from recstack.cli import main

    name = task.rpartition(".")[2]
    config = {
        "seed_everything": 0,
        "run_dir": str(root / name),
        "baselines": False,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": batches,  # an int; 1 would read as 1.0, "all"
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {"class_path": task, "init_args": {"model": model, "optim": {"lr": 0.003}}},
        "data": {"dataset": str(dataset), "batch_size": 128},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path)]) == 0
    out = root / "artifacts" / name / "v1"
    ckpt = root / name / "checkpoints" / "best.ckpt"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def ml100k_artifacts(tmp_path_factory, ml100k_dir) -> dict[str, Path]:
    """Small SASRec (ranker) and two-tower (retriever) artifacts on ML-100K, barely trained:
    valid and served the way a trained one is, with no claim on quality."""
    root = tmp_path_factory.mktemp("serve-artifacts")
    tasks = "recstack.training.tasks"
    return {
        "dataset": ml100k_dir,
        "ranker": build_artifact(
            root, ml100k_dir, f"{tasks}.next_item.NextItemTask",
            {"history_len": 50, "dim": 32, "n_layers": 1, "n_heads": 1},
        ),
        "retriever": build_artifact(
            root, ml100k_dir, f"{tasks}.retrieval.RetrievalTask",
            {"dim": 32, "history_len": 50, "n_heads": 2},
        ),
    }  # fmt: skip

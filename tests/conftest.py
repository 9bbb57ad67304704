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


def _train_and_export(root: Path, dataset: Path, task: str, model: dict) -> Path:
    """A briefly trained model on `dataset`, exported to root/artifacts/<name>/v1."""
    import yaml

    from recstack.cli import main

    name = task.rpartition(".")[2]
    config = {
        "seed_everything": 0,
        "run_dir": str(root / name),
        "baselines": False,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 30,
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
    """Small SASRec (ranker) and two-tower (retriever) artifacts trained briefly on ML-100K."""
    root = tmp_path_factory.mktemp("serve-artifacts")
    tasks = "recstack.training.tasks"
    return {
        "dataset": ml100k_dir,
        "ranker": _train_and_export(
            root, ml100k_dir, f"{tasks}.next_item.NextItemTask",
            {"max_len": 50, "dim": 32, "n_layers": 1, "n_heads": 1},
        ),
        "retriever": _train_and_export(
            root, ml100k_dir, f"{tasks}.retrieval.RetrievalTask",
            {"dim": 32, "history_len": 50, "n_heads": 2},
        ),
    }  # fmt: skip

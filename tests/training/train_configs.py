"""Small `recstack train` configs over a tiny dataset, for CLI and tuning tests."""

from pathlib import Path

import yaml

SASREC = "recstack.training.tasks.next_item.NextItemTask"
RETRIEVAL = "recstack.training.tasks.retrieval.RetrievalTask"


def write_config(tmp_path: Path, dataset: Path, task: str = SASREC, **trainer) -> Path:
    if task == SASREC:
        model = {"history_len": 16, "dim": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.0}
    else:
        model = {"dim": 32, "history_len": 16, "n_heads": 2, "dropout": 0.0}
    config = {
        "seed_everything": 0,
        "run_dir": str(tmp_path / "run"),
        "baselines": False,
        "trainer": {
            "max_epochs": 40,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            **trainer,
        },
        "model": {
            "class_path": task,
            "init_args": {"model": model, "loss": {"kind": "ce"}, "optim": {"lr": 0.01}},
        },
        "data": {"dataset": str(dataset), "batch_size": 8},
        "early_stopping": {"patience": 100},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def logged_and_true_val_ndcg(last_ckpt: Path, dataset: Path) -> tuple[float, float]:
    """(val/ndcg@10 the run logged in its last epoch, full-ranking NDCG@10 of that checkpoint
    over every validation user): equal when the metric was gathered over all ranks."""
    import torch

    from recstack.training.data.datamodule import RecDataModule
    from recstack.training.eval.evaluator import evaluate
    from recstack.training.tasks.next_item import NextItemTask

    logged = torch.load(last_ckpt, weights_only=False)["recstack"]["history"][-1]["val/ndcg@10"]
    task = NextItemTask.load_from_checkpoint(last_ckpt, map_location="cpu", weights_only=False)
    task.net.eval()
    history_len = task.net.config.history_len
    eval_set = RecDataModule(dataset).eval_set("valid")
    result = evaluate(lambda b: task.net.score_all(*b.recent(history_len)), eval_set)
    return logged, result.metrics["ndcg@10"]

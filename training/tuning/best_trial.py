"""The best trial after selection: its config as best.yaml, and its test metrics, computed
once from its best checkpoint (the only test metrics a study ever computes)."""

import json
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console

from recstack.training.run_report import METRICS_FILE, write_run_report
from recstack.training.train_cli import build_cli
from recstack.training.tuning.objective import TRIAL_CONFIG
from recstack.training.tuning.trial_config import write_config


def evaluate_best(trial: FrozenTrial, console: Console) -> dict | None:
    """Test metrics of the best trial's best checkpoint, once (kept in its metrics.json).
    None when this machine does not hold that trial's checkpoint."""
    run_dir = Path(trial.user_attrs.get("run_dir", ""))
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    checkpoint = trial.user_attrs.get("best_checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    quiet = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    argv = ["--config", str(run_dir / TRIAL_CONFIG), "--trainer.limit_val_batches", "0", *quiet]
    cli = build_cli(argv, save_config=False, prog="recstack tune")
    # validate() with no batches: builds the net from the data and restores the checkpoint
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=checkpoint, verbose=False)
    return write_run_report(
        cli.model,
        cli.datamodule,
        run_dir,
        checkpoint,
        trial.user_attrs.get("fit_s", 0.0),
        config=trial.user_attrs["config"],
        baselines=cli.config.baselines,
        quality_threshold=cli.config.quality_threshold,
        tie_orders=cli.config.test_tie_orders,
        console=console,
    )


def write_best_config(trial: FrozenTrial, study: optuna.Study, path: Path) -> Path:
    config = dict(trial.user_attrs["config"])
    config["run_dir"] = f"runs/{study.study_name}-best"
    comment = (
        f"best trial {trial.number} of study {study.study_name!r}: "
        f"val NDCG@10 {trial.value:.4f} at epoch {trial.user_attrs.get('best_epoch')}\n"
        f"params: {json.dumps(trial.params)}"
    )
    return write_config(config, path, comment)


def test_rows(metrics: dict) -> list[dict]:
    """Rows for the report: valid (scored like the test), test, and the baselines on test."""
    rows = [
        {"split": "valid (scored like test)", **metrics["valid"]},
        {"split": "test", **metrics["test"]},
    ]
    for name, values in metrics.get("baselines", {}).items():
        if "skipped" not in values:
            rows.append({"split": f"test, {name}", **values})
    return rows

"""Refit for the test (docs/architecture.md §5, "Refit"): once validation has chosen the epoch
count, the same config trains again on TRAIN + VALID events for that many epochs, and the test
is scored with that model: the baselines are fitted on TRAIN + VALID for the test too.

The validated model's own test figures stay in metrics.json (`test`): they follow the
literature's protocol (train on TRAIN only); the refit's sit beside them (`refit.test`).
"""

import copy
from pathlib import Path

from recstack.segments import segment_metrics, segments_to_dict
from recstack.training.run_report import test_result

REFIT_DIR = "refit"


def refit_config(config: dict, run_dir: Path, epochs: int) -> dict:
    """The resolved training `config` changed to fit on TRAIN + VALID events for `epochs`
    epochs into run_dir/refit, with no validation pass (its targets are training events now):
    no early stopping, and the checkpoint is the last epoch's."""
    config = copy.deepcopy(config)
    config.pop("config", None)  # the file it came from: the dict below is the whole config
    config.update(run_dir=str(Path(run_dir) / REFIT_DIR), ckpt_path=None, refit=False)
    config["baselines"] = False  # the first fit's report has them
    config["data"]["fit_on"] = "train_valid"
    config["trainer"].update(max_epochs=epochs, min_epochs=None, limit_val_batches=0)
    config["trainer"]["logger"] = True  # fresh CSV/TensorBoard logs in the refit's run dir
    config["early_stopping"]["strict"] = False  # nothing to monitor: it never stops the fit
    config["checkpoint"]["monitor"] = None  # keep the last epoch
    return config


def refit_report(task, datamodule, epochs: int, fit_seconds: float, tie_orders: int) -> dict:
    """The refit model's test figures (the same targets and histories as the first fit's)."""
    result = test_result(task, datamodule, tie_orders)
    return {
        "fit_on": datamodule.fit_on,
        "epochs": epochs,
        "fit_seconds": round(fit_seconds, 2),
        "test": result.metrics,
        "segments": segments_to_dict(segment_metrics(result, datamodule.data.users)),
    }

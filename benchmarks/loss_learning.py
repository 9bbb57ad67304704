"""Does every offered loss learn? SASRec on ML-100K for a fixed number of epochs with each loss
recipe, against full CE's best validation NDCG@10 over the same epochs (target: >= 0.9x CE).

    .venv/bin/python benchmarks/loss_learning.py                      # ce, gbce, bce; 30 epochs
    .venv/bin/python benchmarks/loss_learning.py --recipes '[ce, gbce]' --epochs 30

Each recipe is `recstack train --config configs/train/sasrec_ml100k.yaml` with the recipe's
flags, no early stop (patience = epochs), in its own process; the JSON keeps every epoch's
validation NDCG@10, the best and last, the fit time, and the ratio to CE.
"""

import sys
from pathlib import Path

from jsonargparse import auto_cli
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))  # this folder's modules, however it is run
from train_quality import ROOT, run_train

from recstack.eval_report import write_json

# Sampled BCE needs many optimizer steps to leave the popularity plateau (val NDCG@10 ~0.035 for
# 10+ epochs at batch 16 and above): batch 8 gives 8x the steps of the CE config's batch 64.
GBCE = ["--model.init_args.loss.kind", "gbce", "--data.batch_size", "8",
        "--model.init_args.optim.lr", "0.003"]  # fmt: skip
RECIPES = {
    "ce": [],  # the shipped config: full softmax, batch 64, lr 1e-3
    "gbce": GBCE,  # gSASRec: 256 negatives per position, t = 0.75
    "bce": [*GBCE, "--model.init_args.loss.gbce_t", "0.0"],  # the same, uncalibrated (beta = 1)
}
TARGET = 0.9


def loss_learning(
    recipes: list[str] = ["ce", "gbce", "bce"],  # noqa: B006 - read only
    epochs: int = 30,
    seed: int = 0,
    dataset: Path = Path("data/ml-100k"),
    runs: Path = Path("runs/loss-learning"),
    out: Path = ROOT / "benchmarks" / "results" / "loss_learning_ml100k.json",
) -> dict:
    """Train SASRec with each recipe for `epochs` epochs; write the trajectories and the ratios.

    Args:
        recipes: names in RECIPES; "ce" is the reference and always runs.
        epochs: epochs per run (no early stop).
        seed: seed_everything of every run.
        dataset: the prepared ML-100K dir.
        runs: parent of the run dirs (<recipe>).
        out: the JSON summary.
    """
    console = Console(width=160)
    fixed = ["--trainer.max_epochs", str(epochs), "--early_stopping.patience", str(epochs)]
    results: dict = {"epochs": epochs, "seed": seed, "target_ratio": TARGET, "recipes": {}}
    for name in ["ce", *[r for r in recipes if r != "ce"]]:
        console.print(f"training SASRec with {name} for {epochs} epochs ...")
        extra = (*RECIPES[name], *fixed)
        report = run_train("sasrec", seed, dataset, Path(runs) / name, False, extra)
        history = [round(e["val/ndcg@10"], 4) for e in report["history"]]
        results["manifest_hash"] = report["manifest_hash"]
        results["recipes"][name] = {
            "flags": list(RECIPES[name]),
            "val_ndcg@10_by_epoch": history,
            "best_val_ndcg@10": max(history),
            "last_val_ndcg@10": history[-1],
            "test_ndcg@10": round(report["test"]["ndcg@10"], 4),
            "fit_seconds": report["fit_seconds"],
        }
    reference = results["recipes"]["ce"]["best_val_ndcg@10"]
    for name, row in results["recipes"].items():
        row["ratio_to_ce"] = round(row["best_val_ndcg@10"] / reference, 3)
        row["learns"] = row["ratio_to_ce"] >= TARGET
        console.print(
            f"{name:5s} best val NDCG@10 {row['best_val_ndcg@10']:.4f} = {row['ratio_to_ce']:.3f}x CE"
            f" ({'meets' if row['learns'] else 'misses'} {TARGET}x), {row['fit_seconds']:.0f} s"
        )
    write_json(Path(out), results)
    console.print(f"[dim]wrote {out}[/dim]")
    return results


if __name__ == "__main__":
    auto_cli(loss_learning, as_positional=False)

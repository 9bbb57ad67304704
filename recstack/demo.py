"""`recstack demo`: the main job end to end on the embedded default, MovieLens-100K.

Today: prepare ML-100K (grouplens, or the recbole wheel from PyPI when offline) -> train SASRec
briefly with `configs/train/sasrec_ml100k.yaml` (validation NDCG@10 every epoch, best
checkpoint) -> print its full-ranking test metrics next to the baselines (MostPop, EASE,
Markov). Later stages (export -> serve -> HTTP calls) are appended here as they land.
"""

from pathlib import Path

from recstack.errors import DataError, RecstackError
from recstack.progress import console

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "train" / "sasrec_ml100k.yaml"


def demo(
    data_dir: Path = Path("data/ml-100k"),
    run_dir: Path = Path("runs/demo-sasrec-ml100k"),
    max_epochs: int = 25,
    cache: Path | None = None,
) -> dict:
    """Run the main job on MovieLens-100K: prepare -> train SASRec -> test metrics vs baselines.

    Args:
        data_dir: where the prepared ML-100K dataset lives (prepared if missing or invalid).
        run_dir: the training run's directory (checkpoints, logs, metrics.json).
        max_epochs: training epochs (about 5 s each on 2 CPU cores); early stopping may end
            it sooner. The shipped config trains longer for the published numbers.
        cache: download cache dir (default $RECSTACK_CACHE or ~/.cache/recstack).
    """
    from recstack.datasets.dataset_dir import DATASET_KIND
    from recstack.datasets.prepare import prepare
    from recstack.manifest import read_manifest
    from recstack.training.train_cli import train

    data_dir = Path(data_dir)
    try:
        read_manifest(data_dir, DATASET_KIND)
        console.rule("1. data: using the prepared dataset")
        console.print(f"{data_dir} is a valid prepared dataset; delete it to prepare again")
    except DataError:
        console.rule("1. data: prepare MovieLens-100K")
        prepare(source="ml-100k", out=data_dir, overwrite=True, cache=cache)
    if not DEMO_CONFIG.is_file():
        raise RecstackError(f"{DEMO_CONFIG} is missing; run the demo from a recstack checkout")
    console.rule("2. train SASRec, then test it next to the baselines (full ranking, LOO)")
    return train(
        [
            "--config",
            str(DEMO_CONFIG),
            "--data.dataset",
            str(data_dir),
            "--run_dir",
            str(run_dir),
            "--trainer.max_epochs",
            str(max_epochs),
        ]
    )

"""`recstack demo`: the main job end to end on the embedded default, MovieLens-100K.

Today: prepare ML-100K (grouplens, or the recbole wheel from PyPI when offline) -> evaluate the
baselines (MostPop, EASE) with the full-ranking LOO protocol and print the table.
Later stages (train -> export -> serve -> HTTP calls) are appended here as they land.
"""

from pathlib import Path

from recstack.errors import DataError
from recstack.progress import console


def demo(
    data_dir: Path = Path("data/ml-100k"), tie_shuffles: int = 0, cache: Path | None = None
) -> dict:
    """Run the main job on MovieLens-100K: prepare -> baselines.

    Args:
        data_dir: where the prepared ML-100K dataset lives (prepared if missing or invalid).
        tie_shuffles: also evaluate on this many seeded tie shuffles (mean ± std).
        cache: download cache dir (default $RECSTACK_CACHE or ~/.cache/recstack).
    """
    from recstack.datasets.dataset_dir import DATASET_KIND
    from recstack.datasets.prepare import prepare
    from recstack.manifest import read_manifest
    from recstack.training.eval.baselines_cmd import run_baselines

    data_dir = Path(data_dir)
    try:
        read_manifest(data_dir, DATASET_KIND)
        console.rule("1. data: using the prepared dataset")
        console.print(f"{data_dir} is a valid prepared dataset; delete it to prepare again")
    except DataError:
        console.rule("1. data: prepare MovieLens-100K")
        prepare(source="ml-100k", out=data_dir, overwrite=True, cache=cache)
    console.rule("2. baselines: full ranking, leave-one-out, seen items masked")
    return run_baselines(dataset=data_dir, tie_shuffles=tie_shuffles)

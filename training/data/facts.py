"""`DataFacts`: what a task learns from the data, handed over once when training starts.

The data module owns the dataset; a task reads these facts in its `setup` (sizes for its net
and loss, features, evaluation sets) and never asks the data module again. What a task trains
on goes the other way once, as `TrainSamples`, so the data module never reads the task.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from recstack.training.data.features import FeatureVocab
from recstack.eval_set import EvalSet


@dataclass(frozen=True)
class TrainSamples:
    """What a task trains on: "windows" of `length` items (next-item models) or "events"
    with up to `length` earlier events as history (retrieval models)."""

    kind: Literal["windows", "events"]
    length: int


@dataclass(frozen=True)
class DataFacts:
    n_items: int  # items are item_idx 1..n_items (0 is padding)
    n_users: int  # users are user_idx 0..n_users-1
    item_counts: np.ndarray  # [n_items + 1] float64: training events per item_idx
    vocab: FeatureVocab  # categorical feature values (two-tower)
    user_codes: np.ndarray  # [n_users, U] user attribute codes, row = user_idx
    item_tags: np.ndarray  # [n_items + 1, T] multi-hot tags, row = item_idx
    item_cats: np.ndarray  # [n_items + 1, C] item category codes, row = item_idx
    eval_batch_size: int | None  # users per full-ranking batch; None: sized by the catalogue
    eval_set: Callable[[str], EvalSet]  # "valid" / "test" -> its users (built once, cached)
    eval_context: Callable[[str], np.ndarray]  # "valid" / "test" -> [n_users, C] context codes
    # k -> each item's k most frequent next items in the training events and their counts
    # ([n_items + 1, k] each; training/data/transitions.py), built when asked
    followers: Callable[[int], tuple[np.ndarray, np.ndarray]]

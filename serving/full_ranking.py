"""The ranker's own full ranking, torch-free (docs/architecture.md §5).

Each user's history -> the SASRec artifact's state (`recstack.query.encode_scoring`, the last
`history_len` items) -> scores over every item (plus the transition term's bonus); PAD and the
whole history are masked to -inf (also items the artifact does not know, added to the dataset
after it) and the targets ranked by the rule of recstack/ranking_metrics.py (ties to the lower
item_idx), the protocol of training's evaluator. Users go in batches of at most BATCH_USERS
and RANK_MEMORY_ELEMENTS scores, so no users x items matrix is built. The pipeline evaluation
reports these figures beside the served pipeline's: what retrieving N candidates costs.
"""

from dataclasses import dataclass

import numpy as np

from recstack.artifact import Artifact
from recstack.eval_set import EvalSet
from recstack.query import encode_scoring
from recstack.ranking_metrics import RANK_MEMORY_ELEMENTS, UNRANKED, target_ranks, top_k_items
from recstack.schema import PAD_IDX

BATCH_USERS = 256  # histories per ONNX call (attention memory grows with batch x length^2)


@dataclass
class Rankings:
    """ranks [T]: each target's 1-based rank, in eval_set.target_items order (UNRANKED: a
    miss); top [U, k]: each user's list, best first, PAD_IDX where shorter."""

    ranks: np.ndarray
    top: np.ndarray


def full_ranking(artifact: Artifact, eval_set: EvalSet, k: int) -> Rankings:
    """Rank every target of `eval_set` against the whole catalogue with `artifact`'s scores."""
    n_cols, known = eval_set.n_items + 1, artifact.item_embeddings.shape[0]
    batch = min(BATCH_USERS, max(1, RANK_MEMORY_ELEMENTS // n_cols))
    ranks = np.empty(eval_set.target_items.shape[0], dtype=np.int64)
    top = np.zeros((eval_set.n_users, min(k, n_cols)), dtype=np.int64)
    for start in range(0, eval_set.n_users, batch):
        stop = min(start + batch, eval_set.n_users)
        sub = eval_set.slice(start, stop)
        histories = [  # items the artifact does not know are dropped, as serving drops them
            [i for i in sub.history(row).tolist() if i < known] for row in range(sub.n_users)
        ]
        queries, bonus = encode_scoring(artifact, histories)
        scores = queries @ artifact.item_embeddings.T  # [B, its items + 1]
        if bonus is not None:
            bonus.add_to_all(scores)
        if scores.shape[1] < n_cols:  # items added after the artifact: it cannot rank them
            blind = np.full((scores.shape[0], n_cols - scores.shape[1]), -np.inf, scores.dtype)
            scores = np.concatenate([scores, blind], axis=1)
        scores[np.repeat(np.arange(sub.n_users), sub.history_lengths), sub.history_items] = -np.inf
        scores[:, PAD_IDX] = -np.inf
        rows = np.repeat(np.arange(sub.n_users), sub.target_counts)
        rank = target_ranks(scores, rows, sub.target_items)
        never = scores[rows, sub.target_items] == -np.inf  # masked: already seen
        t0, t1 = eval_set.target_indptr[start], eval_set.target_indptr[stop]
        ranks[t0:t1] = np.where(never, UNRANKED, rank)
        top[start:stop] = top_k_items(scores, k)
    return Rankings(ranks=ranks, top=top)

"""Ranks and top-k lists of score rows on torch, for the evaluator (docs/architecture.md §5).

The ranking rule (ties to the lower item_idx), its numpy twin and the metrics computed from
these ranks are in recstack/ranking_metrics.py.
"""

import torch

from recstack.ranking_metrics import RANK_MEMORY_ELEMENTS
from recstack.schema import PAD_IDX


def target_ranks(
    scores: torch.Tensor,
    rows: torch.Tensor,
    items: torch.Tensor,
    max_elements: int = RANK_MEMORY_ELEMENTS,
) -> torch.Tensor:
    """1-based rank of each target in its score row (ties to the lower item_idx).

    scores [B, N] float; rows [T] long (row of each target); items [T] long (column of each
    target). Returns [T] long on scores.device. Works in chunks of targets so that at most
    `max_elements` comparisons are materialised.
    """
    n_cols = scores.shape[1]
    cols = torch.arange(n_cols, device=scores.device)
    out = torch.empty(rows.shape[0], dtype=torch.long, device=scores.device)
    chunk = max(1, max_elements // max(n_cols, 1))
    for start in range(0, rows.shape[0], chunk):
        r, t = rows[start : start + chunk], items[start : start + chunk]
        row_scores = scores[r]  # [C, N]
        s = row_scores.gather(1, t[:, None])  # [C, 1]
        higher = (row_scores > s).sum(1)
        tied_before = ((row_scores == s) & (cols[None, :] < t[:, None])).sum(1)
        out[start : start + chunk] = 1 + higher + tied_before
    return out


def top_k_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] item columns of each row in rank order (score desc, ties to the lower item_idx).

    Entries whose score is -inf (masked) are returned as PAD_IDX. k is capped at the row length.
    """
    k = min(k, scores.shape[1])
    kth = torch.topk(scores, k, dim=1).values[:, -1:]  # [B, 1]
    # Every item scoring >= the k-th value is a candidate; take them all (plus lower ones in
    # rows with fewer candidates), then order by (index asc) and stably by (score desc).
    m = int((scores >= kth).sum(1).max())
    values, idx = torch.topk(scores, m, dim=1)
    by_index = torch.argsort(idx, dim=1)
    idx, values = idx.gather(1, by_index), values.gather(1, by_index)
    by_score = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    top, top_values = idx.gather(1, by_score), values.gather(1, by_score)
    return top.masked_fill(top_values == float("-inf"), PAD_IDX)

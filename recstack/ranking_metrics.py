"""Ranking and beyond-accuracy metrics from ranks and top-k lists, numpy only
(docs/architecture.md §5): training's evaluator and serving's pipeline evaluation share them.

Ranking is over a score row s[0..n_items] (column 0 = PAD, masked to -inf by the evaluator).
Items are ordered by score, descending; **ties go to the lower item_idx**. The 1-based rank of
item t is therefore

    rank(t) = 1 + #{j : s[j] > s[t]} + #{j < t : s[j] == s[t]}

which is deterministic and identical on CPU and CUDA. Top-k lists use the same order, so a
target is in the top-k list exactly when rank <= k.

Per-user accuracy metrics, for a user with target set T (|T| >= 1) and cut-off k:

- hr@k      = 1 if any target has rank <= k else 0
- recall@k  = #{t in T : rank(t) <= k} / |T|
- ndcg@k    = sum_{t in T, rank(t) <= k} 1 / log2(rank(t) + 1)  /  IDCG,
              IDCG = sum_{i=1}^{min(|T|, k)} 1 / log2(i + 1)
- mrr@k     = 1 / min_t rank(t) if that rank <= k else 0

Beyond accuracy, from each user's top-k list (masked, -inf-scored items never count), with
pop(i) = number of distinct users having item i among the history events the evaluation allows
(TRAIN for validation, TRAIN + VALID for test) and n = number of users with such events:

- coverage@k = #distinct items in any user's top-k list / n_items
- arp@k      = per user, mean over the top-k items of pop(i) / n (average recommendation
               popularity, as a fraction of users); the reported value is the mean over users
- pop_lift@k = (mean_u arp@k(u) - mean_u hpop(u)) / mean_u hpop(u), where hpop(u) is the mean
               pop(i) / n over the distinct items in user u's history (popularity lift of
               Abdollahpouri et al. 2019: > 0 means recommendations are more popular than what
               users consumed, 0 means as popular)
- novelty@k  = per user, mean over the top-k items of -log2(max(pop(i), 1) / n) bits (mean
               self-information; items never seen count as seen by one user so it stays finite)
"""

from typing import TYPE_CHECKING

import numpy as np

from recstack.schema import PAD_IDX

if TYPE_CHECKING:
    from recstack.eval_set import EvalSet

UNRANKED = 1 << 60  # rank of a target that cannot be hit (masked, or not in a list): a miss
RANK_MEMORY_ELEMENTS = 1 << 25  # bound on T x n_items comparisons held at once


def target_ranks(
    scores: np.ndarray,
    rows: np.ndarray,
    items: np.ndarray,
    max_elements: int = RANK_MEMORY_ELEMENTS,
) -> np.ndarray:
    """[T] 1-based rank of each target in its score row by the rule above (numpy; the
    evaluator's torch twin is training/eval/metrics.py). scores [B, N]; rows [T] the row of
    each target; items [T] its column. At most `max_elements` comparisons are held at once."""
    n_cols = scores.shape[1]
    cols = np.arange(n_cols)
    out = np.empty(rows.shape[0], dtype=np.int64)
    chunk = max(1, max_elements // max(n_cols, 1))
    for start in range(0, rows.shape[0], chunk):
        r, t = rows[start : start + chunk], items[start : start + chunk]
        row_scores = scores[r]  # [C, N]
        s = row_scores[np.arange(r.shape[0]), t][:, None]  # [C, 1]
        higher = (row_scores > s).sum(1)
        tied_before = ((row_scores == s) & (cols[None, :] < t[:, None])).sum(1)
        out[start : start + chunk] = 1 + higher + tied_before
    return out


def top_k_items(scores: np.ndarray, k: int) -> np.ndarray:
    """[B, k] columns of each row in rank order (score desc, ties to the lower item_idx);
    -inf (masked) entries come back as PAD_IDX. k is capped at the row length."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # the k best, ties cut arbitrarily
    kth = np.take_along_axis(scores, part, axis=1).min(1, keepdims=True)  # [B, 1]
    # Every column scoring >= the k-th value may belong; order them by (score desc, index asc).
    ties = int((scores >= kth).sum(1).max())
    cand = (
        np.argpartition(-scores, ties - 1, axis=1)[:, :ties]
        if ties < scores.shape[1]
        else (np.broadcast_to(np.arange(scores.shape[1]), scores.shape))
    )
    cand_scores = np.take_along_axis(scores, cand, axis=1)
    order = np.lexsort((cand, -cand_scores), axis=1)[:, :k]
    top, top_scores = (
        np.take_along_axis(cand, order, axis=1),
        np.take_along_axis(cand_scores, order, axis=1),
    )
    return np.where(top_scores == -np.inf, PAD_IDX, top)


def _discounts(n: int) -> np.ndarray:
    """[n + 1] cumulative DCG of ranks 1..j at index j (index 0 = 0)."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, n + 2)))])


def accuracy_metrics(
    ranks: np.ndarray, target_indptr: np.ndarray, ks, suffix: str = ""
) -> dict[str, np.ndarray]:
    """Per-user hr/recall/ndcg/mrr @k from target ranks.

    ranks [T] 1-based ranks of the targets; target_indptr [U + 1] CSR offsets (every user has
    >= 1 target). Returns {"hr@10" + suffix: [U] float64, ...}.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    counts = np.diff(target_indptr)
    if counts.size and counts.min() < 1:
        raise ValueError("every evaluated user needs at least one target")
    n_users = counts.shape[0]
    row = np.repeat(np.arange(n_users), counts)
    first = np.minimum.reduceat(ranks, target_indptr[:-1]) if n_users else np.zeros(0, np.int64)
    gain = 1.0 / np.log2(ranks + 1.0)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks <= k
        hits = np.bincount(row, weights=hit, minlength=n_users)
        dcg = np.bincount(row, weights=np.where(hit, gain, 0.0), minlength=n_users)
        idcg = _discounts(k)[np.minimum(counts, k)]
        out[f"hr@{k}{suffix}"] = (hits > 0).astype(np.float64)
        out[f"recall@{k}{suffix}"] = hits / counts
        out[f"ndcg@{k}{suffix}"] = dcg / idcg
        out[f"mrr@{k}{suffix}"] = np.where(first <= k, 1.0 / first, 0.0)
    return out


def _row_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean of values[u, valid[u]] per row, NaN for rows without a valid entry."""
    n = valid.sum(1)
    total = np.where(valid, values, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def history_popularity(
    history_indptr: np.ndarray,
    history_items: np.ndarray,
    item_popularity: np.ndarray,
    n_history_users: int,
) -> np.ndarray:
    """[U] hpop(u): mean pop(i) / n over the distinct items of each user's history (NaN if empty)."""
    n_users = history_indptr.shape[0] - 1
    stride = item_popularity.shape[0]
    row = np.repeat(np.arange(n_users), np.diff(history_indptr))
    pairs = np.unique(row * stride + history_items)
    urow, item = pairs // stride, pairs % stride
    share = item_popularity[item] / max(n_history_users, 1)
    total = np.bincount(urow, weights=share, minlength=n_users)
    n = np.bincount(urow, minlength=n_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def beyond_accuracy(
    top: np.ndarray,
    ks,
    n_items: int,
    item_popularity: np.ndarray,
    n_history_users: int,
    history_pop: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-user arp@k / novelty@k and global coverage@k / pop_lift@k (see module docstring).

    top [U, K] top-K item lists (PAD_IDX = no item), K >= max(ks); history_pop [U] hpop(u).
    """
    n = max(n_history_users, 1)
    share = item_popularity / n  # [n_items + 1]
    info = -np.log2(np.maximum(item_popularity, 1) / n)
    per_user: dict[str, np.ndarray] = {}
    overall: dict[str, float] = {}
    mean_hist = float(np.nanmean(history_pop)) if np.isfinite(history_pop).any() else np.nan
    for k in ks:
        lists = top[:, :k]
        valid = lists != PAD_IDX
        arp = _row_mean(share[lists], valid)
        per_user[f"arp@{k}"] = arp
        per_user[f"novelty@{k}"] = _row_mean(info[lists], valid)
        recommended = np.unique(lists[valid])
        overall[f"coverage@{k}"] = float(recommended.shape[0] / n_items)
        mean_arp = float(np.nanmean(arp)) if np.isfinite(arp).any() else np.nan
        overall[f"pop_lift@{k}"] = (
            float((mean_arp - mean_hist) / mean_hist) if mean_hist and mean_hist > 0 else np.nan
        )
    return per_user, overall


def beyond_accuracy_of(
    eval_set: "EvalSet", top: np.ndarray, ks
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """beyond_accuracy of the top-K lists [U, K] of an eval set's users, against its item
    popularity and its users' histories."""
    history_pop = history_popularity(
        eval_set.history_indptr,
        eval_set.history_items,
        eval_set.item_popularity,
        eval_set.n_history_users,
    )
    return beyond_accuracy(
        top, ks, eval_set.n_items, eval_set.item_popularity, eval_set.n_history_users, history_pop
    )

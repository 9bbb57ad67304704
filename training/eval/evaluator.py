"""Full-ranking evaluation over the whole catalogue (docs/architecture.md §5).

`evaluate(score_fn, eval_set)` walks the evaluated users in batches. For each batch the model's
`score_fn` receives an `EvalBatch` and returns scores for every item; the evaluator masks PAD
and every item in the user's history to -inf (one scatter), ranks the targets against all
remaining items (ties to the lower item_idx, see recstack/ranking_metrics.py), and keeps
per-user metrics. The batch size is chosen so that one batch holds at most ~2^25 scores: no
users x items matrix for the whole set is ever built. Everything runs on `device` (CUDA when available).

Sampled metrics (`sampled=N`, legacy protocol, never the default) rank each user's targets
against N negatives drawn uniformly, with replacement, from the items the user has neither in
the history nor among the targets, seeded by `seed`; the targets of one user share the sample
(and are ranked against each other as well), so ranks stay distinct. Keys carry the suffix
`_sampled{N}`, e.g. "ndcg@10_sampled100".
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from recstack.errors import RecstackError
from recstack.eval_set import EvalSet
from recstack.ranking_metrics import UNRANKED, accuracy_metrics, beyond_accuracy_of
from recstack.schema import PAD_IDX
from recstack.training.eval.metrics import target_ranks, top_k_items

BATCH_MEMORY_ELEMENTS = 1 << 25  # scores (or history slots) held per batch: 128 MiB of float32


@dataclass
class EvalBatch:
    """What a score function sees for a batch of B users (all tensors on the eval device).

    users [B] long user_idx; history [B, L] long item_idx in time order, right-padded with
    PAD_IDX (L = longest history in the batch, at least 1); lengths [B] long real lengths;
    history_ts [B, L] long timestamps when the eval set has them (padding: increasing values
    after the last real one, so padding never ties).
    """

    users: torch.Tensor
    history: torch.Tensor
    lengths: torch.Tensor
    history_ts: torch.Tensor | None = None

    def shuffle_ties(self, generator: torch.Generator) -> "EvalBatch":
        """The batch with each run of equal-timestamp history events in a random order.

        The order of events logged in the same second is arbitrary; scoring several such orders
        and averaging marginalises it out. Needs history_ts.
        """
        if self.history_ts is None:
            raise RecstackError("shuffle_ties needs history timestamps (EvalSet.history_ts)")
        ts = self.history_ts
        changes = (ts[:, 1:] != ts[:, :-1]).long().cumsum(1)
        group = torch.cat([torch.zeros_like(ts[:, :1]), changes], dim=1).double()  # [B, L]
        noise = torch.rand(ts.shape, generator=generator, dtype=torch.float64)
        order = (group + 0.5 * noise.to(ts.device)).argsort(dim=1)
        return EvalBatch(
            self.users, self.history.gather(1, order), self.lengths, ts.gather(1, order)
        )

    def recent(self, history_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(history [B, min(L, history_len)], lengths [B]): the last events, right-padded."""
        width = min(history_len, self.history.shape[1])
        lengths = self.lengths.clamp(max=width)
        offsets = torch.arange(width, device=self.history.device)
        index = ((self.lengths - width).clamp(min=0)[:, None] + offsets[None, :]).clamp(
            max=self.history.shape[1] - 1
        )
        recent = self.history.gather(1, index).masked_fill(
            offsets[None, :] >= lengths[:, None], PAD_IDX
        )
        return recent, lengths


ScoreFn = Callable[[EvalBatch], torch.Tensor]  # -> [B, n_items + 1] float scores


@dataclass
class EvalResult:
    """Aggregated metrics plus per-user arrays (aligned with `users`) for slicing by segment.

    metrics: flat {"hr@10": mean, ..., "coverage@10": value, "pop_lift@10": value}; per_user:
    {"hr@10": [U], "arp@10": [U], ...}; target_ranks [T] full-ranking ranks of the targets in
    the order of eval_set.target_items (UNRANKED for a target scored -inf, e.g. already seen); top_items [U, max(ks)] int32 each user's top list
    (PAD_IDX where fewer items were unmasked).
    """

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    history_lengths: np.ndarray
    target_ranks: np.ndarray
    top_items: np.ndarray
    ks: tuple[int, ...]
    sampled: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.users.shape[0])


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecstackError(f"device {device} requested but CUDA is not available; use cpu")
    return device


def auto_batch_size(n_items: int, max_history: int = 1) -> int:
    """Users per batch so that B x max(n_items + 1, longest history) <= BATCH_MEMORY_ELEMENTS."""
    return max(1, BATCH_MEMORY_ELEMENTS // max(n_items + 1, max_history, 1))


def _positions(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, counts): the CSR entries of `rows` concatenated, and their count per row."""
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return offsets + np.arange(int(counts.sum())), counts


def make_batch(
    eval_set: EvalSet, start: int, stop: int, device: torch.device, rows: np.ndarray | None = None
) -> EvalBatch:
    """The EvalBatch of users start..stop-1 of `eval_set`, or of the users at positions `rows`
    (vectorised right padding)."""
    rows = np.arange(start, stop) if rows is None else rows
    positions, lengths = _positions(eval_set.history_indptr, rows)
    b = rows.shape[0]
    width = max(1, int(lengths.max()) if b else 1)
    history = np.full((b, width), PAD_IDX, dtype=np.int64)
    row = np.repeat(np.arange(b), lengths)
    pos = np.arange(positions.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    history[row, pos] = eval_set.history_items[positions]
    history_ts = None
    if eval_set.history_ts is not None:
        ts = np.iinfo(np.int64).max - width + np.arange(width)[None, :].repeat(b, 0)
        ts[row, pos] = eval_set.history_ts[positions]
        history_ts = torch.from_numpy(ts).to(device)
    return EvalBatch(
        users=torch.from_numpy(eval_set.users[rows].copy()).to(device),
        history=torch.from_numpy(history).to(device),
        lengths=torch.from_numpy(lengths.astype(np.int64)).to(device),
        history_ts=history_ts,
    )


def sample_negatives(eval_set: EvalSet, n: int, seed: int = 0) -> np.ndarray:
    """[U, n] item_idx drawn uniformly with replacement from the items each user has not seen.

    "Seen" = in the history or among the targets. A user for whom no such item exists gets
    PAD_IDX entries, which are ignored by the ranking. Deterministic in (eval_set, n, seed).
    """
    rng = np.random.default_rng(seed)
    n_users, stride = eval_set.n_users, eval_set.n_items + 1
    user_row = np.arange(n_users)
    seen_keys = np.unique(
        np.concatenate(
            [
                np.repeat(user_row, eval_set.history_lengths) * stride + eval_set.history_items,
                np.repeat(user_row, eval_set.target_counts) * stride + eval_set.target_items,
            ]
        )
    )
    n_seen = np.bincount(seen_keys // stride, minlength=n_users)
    out = rng.integers(1, eval_set.n_items + 1, size=(n_users, n))
    out[n_seen >= eval_set.n_items] = PAD_IDX
    flat = out.reshape(-1)
    check = np.flatnonzero(flat != PAD_IDX)
    for _ in range(10_000):  # redraw seen items until none is left
        keys = (check // n) * stride + flat[check]
        pos = np.searchsorted(seen_keys, keys).clip(max=max(seen_keys.shape[0] - 1, 0))
        check = check[seen_keys[pos] == keys] if seen_keys.size else check[:0]
        if not check.size:
            break
        flat[check] = rng.integers(1, eval_set.n_items + 1, size=check.shape[0])
    flat[check] = PAD_IDX  # vanishingly rare: users that have seen almost every item
    return out


def _sampled_ranks(
    scores: torch.Tensor,
    rows: torch.Tensor,
    items: torch.Tensor,
    negatives: torch.Tensor,
) -> torch.Tensor:
    """[T] 1 + #negatives of the target's user that beat it (same tie-break as full ranking)."""
    s = scores[rows, items][:, None]  # [T, 1]
    neg = negatives[rows]  # [T, N]
    neg_scores = scores[rows[:, None], neg]
    beats = (neg_scores > s) | ((neg_scores == s) & (neg < items[:, None]))
    beats &= neg != PAD_IDX
    return 1 + beats.sum(1)


def _rank_within_user(ranks: np.ndarray, target_indptr: np.ndarray) -> np.ndarray:
    """[T] number of the same user's other targets ranked above each target."""
    counts = np.diff(target_indptr)
    row = np.repeat(np.arange(counts.shape[0]), counts)
    order = np.lexsort((ranks, row))
    position = np.empty_like(ranks)
    position[order] = np.arange(ranks.shape[0]) - target_indptr[row[order]]
    return position


def evaluate(
    score_fn: ScoreFn,
    eval_set: EvalSet,
    ks: Sequence[int] = (10, 20),
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    sampled: int | None = None,
    seed: int = 0,
    beyond: bool = True,
) -> EvalResult:
    """Full-ranking metrics of `score_fn` on `eval_set` (see this module's docstring and
    recstack/ranking_metrics.py).

    Args:
        score_fn: EvalBatch -> FloatTensor[B, n_items + 1]; column 0 (PAD) and the user's history
            items are masked to -inf by the evaluator. It runs under torch.inference_mode();
            put a model in eval() mode first.
        eval_set: from `build_eval_set`.
        ks: cut-offs.
        batch_size: users per batch; None chooses one that keeps B x n_items <= 2^25.
        device: where scores are masked and ranked; None = cuda if available, else cpu.
        sampled: also compute sampled metrics against this many negatives ("_sampled{N}" keys).
        seed: seed of the negative sample.
        beyond: also compute coverage, popularity lift and novelty (False during training's
            per-epoch validation, which only needs accuracy).
    """
    device = resolve_device(device)
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise RecstackError(f"ks must be positive cut-offs, got {ks}")
    n_cols = eval_set.n_items + 1
    n_users = eval_set.n_users
    lengths = eval_set.history_lengths
    if batch_size is None:
        batch_size = auto_batch_size(eval_set.n_items, int(lengths.max()) if n_users else 1)
    max_k = min(max(ks), n_cols)
    ranks = np.empty(eval_set.target_items.shape[0], dtype=np.int64)
    top = np.zeros((n_users, max_k), dtype=np.int32)
    negatives = sample_negatives(eval_set, sampled, seed) if sampled else None
    neg_ranks = np.empty_like(ranks) if sampled else None
    tptr = eval_set.target_indptr

    with torch.inference_mode():
        # Longest histories first: batches hold users of similar length (less padding for
        # sequence models); results go back to each user's own position.
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, n_users, batch_size):
            rows = order[start : start + batch_size]
            batch = make_batch(eval_set, 0, 0, device, rows=rows)
            raw = score_fn(batch)
            if tuple(raw.shape) != (rows.shape[0], n_cols):
                raise RecstackError(
                    f"score_fn returned shape {tuple(raw.shape)}; expected "
                    f"[batch={rows.shape[0]}, n_items + 1={n_cols}] (column 0 is PAD)"
                )
            scores = raw.to(device=device, dtype=torch.float32)
            if torch.isnan(scores).any():
                raise RecstackError("score_fn returned NaN scores; check the model's inputs")
            # Mask PAD and seen items: out of place, the score_fn's tensor is never modified.
            scores = scores.scatter(1, batch.history, float("-inf"))
            scores[:, PAD_IDX] = float("-inf")

            targets, counts = _positions(tptr, rows)
            counts = torch.from_numpy(counts).to(device)
            batch_rows = torch.repeat_interleave(torch.arange(rows.shape[0], device=device), counts)
            items = torch.from_numpy(eval_set.target_items[targets]).to(device)
            rank = target_ranks(scores, batch_rows, items)
            never = scores[batch_rows, items] == float("-inf")  # seen, or excluded by score_fn
            ranks[targets] = rank.masked_fill(never, UNRANKED).cpu().numpy()
            top[rows] = top_k_items(scores, max_k).cpu().numpy()
            if negatives is not None:
                neg = torch.from_numpy(negatives[rows]).to(device)
                rank = _sampled_ranks(scores, batch_rows, items, neg).masked_fill(never, UNRANKED)
                neg_ranks[targets] = rank.cpu().numpy()

    per_user = accuracy_metrics(ranks, tptr, ks)
    if negatives is not None:
        neg_ranks += _rank_within_user(ranks, tptr)
        per_user.update(accuracy_metrics(neg_ranks, tptr, ks, suffix=f"_sampled{sampled}"))
    beyond_all = {}
    if beyond:
        beyond_user, beyond_all = beyond_accuracy_of(eval_set, top, ks)
        per_user.update(beyond_user)
    metrics = {
        name: (float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"))
        for name, v in per_user.items()
    }
    metrics.update(beyond_all)
    return EvalResult(
        metrics=_ordered(metrics, ks, sampled, beyond),
        per_user=per_user,
        users=eval_set.users,
        history_lengths=lengths,
        target_ranks=ranks,
        top_items=top,
        ks=ks,
        sampled=sampled,
        info={
            "target": eval_set.target,
            "n_users": n_users,
            "n_targets": int(ranks.shape[0]),
            "n_items": eval_set.n_items,
            "n_users_dropped_no_history": eval_set.n_users_dropped_no_history,
            "n_targets_dropped_seen": eval_set.n_targets_dropped_seen,
            "device": str(device),
        },
    )


def _ordered(
    metrics: dict[str, float], ks: tuple[int, ...], sampled: int | None, beyond: bool
) -> dict:
    """Metrics in a stable reading order: accuracy per k, beyond accuracy per k, sampled."""
    names = [f"{m}@{k}" for m in ("hr", "recall", "ndcg", "mrr") for k in ks]
    if beyond:
        names += [f"{m}@{k}" for m in ("coverage", "arp", "pop_lift", "novelty") for k in ks]
    if sampled:
        names += [f"{m}@{k}_sampled{sampled}" for m in ("hr", "recall", "ndcg", "mrr") for k in ks]
    return {name: metrics[name] for name in names}

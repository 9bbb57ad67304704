"""Training losses over the item catalogue (docs/architecture.md §6).

Every loss scores an item by a dot product: logit = query @ item_vectors(item_idx).T. The caller
applies any temperature or normalisation to `query`. Real items are 1..n_items; PAD_IDX (0) is
never a class. Logits are promoted to float32 before any softmax or sigmoid.

- `full_cross_entropy`: softmax over the whole catalogue, streamed over chunks of items with an
  online logsumexp; each chunk is checkpointed, so peak memory is O(N x chunk_items) in forward
  AND backward. The item vectors are computed once per call (a two-tower's item tower runs once
  per step, not once per chunk and again in backward).
- `sampled_softmax`: softmax over the row's positive and a pool of negatives, with the logQ
  correction of Yi et al. 2019. Convention: every candidate j (the positive included) gets the
  logit s_j - log q_j, where q_j is the EXPECTED NUMBER OF TIMES item j occurs in the batch's
  negative pool:
      uniform   k draws from 1..n_items          q_j = k / n_items          (constant: cancels)
      in_batch  P of the batch's N targets       q_j = P * p_j,  p_j = count_j / sum(count)
      mixed     both pools (Yang et al. 2020)    q_j = P * p_j + k / n_items
  P = min(N, in_batch_cap): past the cap, a random subset of the targets (without replacement)
  forms the pool, which is distributed like P draws by frequency, so q_j keeps its form.
  For mixed, q_j is the mixture's expected count whichever pool drew the candidate (the
  multiple-importance-sampling "balance heuristic"): correcting by a candidate's own pool alone
  would give a rare in-batch item the unbounded weight 1 / (N p_j). Popular items have larger q_j,
  so their logits are lowered more: a popular negative is pushed down less than without the
  correction, and a rare positive gets a boost relative to popular negatives.
- `gbce_loss`: gBCE of Petrov & Macdonald 2023 (gSASRec) over k uniform negatives per row.

Sampled-softmax negatives are shared by all rows of a batch; gBCE's are drawn per row, as in
gSASRec. Both are drawn with replacement (duplicates stay). An accidental hit, a negative equal
to the row's own target, is masked out of that row.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from recstack.errors import RecstackError
from recstack.schema import PAD_IDX

ItemVectors = Callable[[torch.Tensor], torch.Tensor]  # item_idx long [*] -> vectors [*, d]
Bonus = tuple[torch.Tensor, torch.Tensor]  # per row: item_idx [N, k], logit added [N, k]
Reduction = Literal["mean", "none"]
KINDS = ("ce", "sampled", "gbce")
NEGATIVE_KINDS = ("uniform", "in_batch", "mixed")


@dataclass
class LossConfig:
    """Which loss `RecLoss` computes; fields other than `kind` apply only to their loss."""

    kind: Literal["ce", "sampled", "gbce"] = "ce"
    negatives: Literal["uniform", "in_batch", "mixed"] = "uniform"  # sampled only
    n_negatives: int = 256  # uniform negatives per batch, shared by all rows
    logq: bool = True  # logQ correction for sampled softmax
    # in_batch / mixed: at most this many of the batch's targets form the negative pool (the
    # logits are N x pool: SASRec's N is batch x history_len)
    in_batch_cap: int = 4096
    chunk_items: int = 16384  # full CE: items per chunk
    gbce_t: float = 0.75  # gBCE calibration t in [0, 1]: 0 = plain BCE, 1 = fully calibrated

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RecstackError(f"loss kind={self.kind!r} is unknown; use one of {KINDS}")
        if self.negatives not in NEGATIVE_KINDS:
            raise RecstackError(
                f"loss negatives={self.negatives!r} is unknown; use one of {NEGATIVE_KINDS}"
            )
        if self.n_negatives < 1:
            raise RecstackError(f"loss n_negatives={self.n_negatives} must be >= 1")
        if self.in_batch_cap < 1:
            raise RecstackError(f"loss in_batch_cap={self.in_batch_cap} must be >= 1")
        if self.chunk_items < 1:
            raise RecstackError(f"loss chunk_items={self.chunk_items} must be >= 1")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise RecstackError(f"loss gbce_t={self.gbce_t} must lie in [0, 1]")


def _reduce(loss: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    return loss.mean() if reduction == "mean" else loss


def _add_bonus(logits: torch.Tensor, bonus: Bonus | None, first_item: int) -> torch.Tensor:
    """logits [N, C] of items first_item.. first_item + C - 1, plus each row's bonus there."""
    if bonus is None:
        return logits
    items, values = bonus
    column = items - first_item
    inside = (column >= 0) & (column < logits.shape[1]) & (items != PAD_IDX)
    values = torch.where(inside, values.to(logits.dtype), 0.0)
    return logits.scatter_add(1, column.clamp(0, logits.shape[1] - 1), values)


def _chunk_logsumexp(
    query: torch.Tensor,
    chunk: torch.Tensor,
    first_item: int,
    bonus_items: torch.Tensor | None = None,
    bonus_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """logsumexp of query [N, d] against a chunk of item vectors [C, d] (items first_item..)
    plus the rows' bonus -> [N] float32."""
    bonus = None if bonus_items is None else (bonus_items, bonus_values)
    return torch.logsumexp(_add_bonus((query @ chunk.T).float(), bonus, first_item), dim=1)


def full_cross_entropy(
    query: torch.Tensor,
    target: torch.Tensor,
    item_vectors: ItemVectors,
    n_items: int,
    chunk_items: int,
    reduction: Reduction = "mean",
    bonus: Bonus | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy over items 1..n_items: query [N, d], target [N] -> scalar (or [N]).

    `bonus` (items [N, k], values [N, k]): added to those items' logits in each row (SASRec's
    transition term); PAD_IDX entries are ignored."""
    table = item_vectors(torch.arange(1, n_items + 1, device=query.device))  # [n_items, d], once
    if n_items <= chunk_items:  # fast path: one [N, n_items] logits matrix
        logits = _add_bonus((query @ table.T).float(), bonus, 1)  # [N, n_items]
        return F.cross_entropy(logits, target - 1, reduction=reduction)
    lse = torch.full((query.shape[0],), -math.inf, device=query.device)  # [N] running logsumexp
    extra = () if bonus is None else bonus
    for start in range(0, n_items, chunk_items):
        chunk = table[start : start + chunk_items]  # a view: the tower is not run again
        if torch.is_grad_enabled():  # recompute the chunk's logits in backward instead of saving
            chunk_lse = checkpoint(
                _chunk_logsumexp, query, chunk, start + 1, *extra, use_reentrant=False
            )
        else:
            chunk_lse = _chunk_logsumexp(query, chunk, start + 1, *extra)
        lse = torch.logaddexp(lse, chunk_lse)
    positive = (query * table[target - 1]).sum(-1).float()  # [N]
    if bonus is not None:
        items, values = bonus
        positive = positive + (values.float() * (items == target[:, None])).sum(-1)
    return _reduce(lse - positive, reduction)


def uniform_negatives(
    n_items: int, k: int, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """k item_idx drawn uniformly with replacement from 1..n_items -> [k] long on `device`."""
    draw_device = generator.device if generator is not None else device
    return torch.randint(1, n_items + 1, (k,), generator=generator, device=draw_device).to(device)


def pool_log_q(
    item_idx: torch.Tensor, item_log_p: torch.Tensor, n_in_batch: int, n_uniform: int
) -> torch.Tensor:
    """log q_j for item_idx [*] -> [*]: log expected count of j in a pool of n_in_batch draws
    by frequency (item_log_p [n_items + 1], log p_j) and n_uniform uniform draws."""
    n_items = item_log_p.shape[0] - 1
    if n_in_batch == 0:
        return torch.full(item_idx.shape, math.log(n_uniform / n_items), device=item_idx.device)
    in_batch = item_log_p[item_idx] + math.log(n_in_batch)
    if n_uniform == 0:
        return in_batch
    return torch.logaddexp(in_batch, in_batch.new_tensor(math.log(n_uniform / n_items)))


def sampled_softmax(
    query: torch.Tensor,
    target: torch.Tensor,
    item_vectors: ItemVectors,
    negatives_kind: Literal["uniform", "in_batch", "mixed"],
    n_negatives: int,
    item_log_q: torch.Tensor,
    logq: bool = True,
    generator: torch.Generator | None = None,
    negatives: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    in_batch_cap: int | None = None,
) -> torch.Tensor:
    """Sampled softmax with logQ correction (convention in the module docstring).

    query [N, d], target [N] -> scalar (or [N]). item_log_q [n_items + 1]: log p_j, the log
    probability that one in-batch draw is item j (PAD entry unused). `negatives` [k] long replaces
    the uniform draw (uniform and mixed only) and counts as k uniform draws. `in_batch_cap`: the
    most targets the in-batch pool holds (None: all N).
    """
    n_items, n = item_log_q.shape[0] - 1, target.shape[0]
    use_batch = negatives_kind in ("in_batch", "mixed")
    if negatives is not None and negatives_kind not in ("uniform", "mixed"):
        raise RecstackError("explicit negatives need negatives_kind 'uniform' or 'mixed'")
    if negatives_kind == "in_batch":
        negatives = target.new_empty(0)
    elif negatives is None:
        negatives = uniform_negatives(n_items, n_negatives, query.device, generator)
    item_idx = torch.cat([target, negatives])  # [N + k]
    vectors = item_vectors(item_idx)  # [N + k, d]
    positive = (query * vectors[:n]).sum(-1, keepdim=True).float()  # [N, 1]
    negative_idx, negative_vectors = negatives, vectors[n:]  # [M], [M, d]: the pool
    if use_batch:  # the batch's targets (or a random P of them) first, then uniform
        rows = in_batch_rows(n, in_batch_cap, query.device, generator)
        if rows is None:
            negative_idx, negative_vectors = item_idx, vectors
        else:
            negative_idx = torch.cat([target[rows], negatives])
            negative_vectors = torch.cat([vectors[rows], vectors[n:]])
    negative = (query @ negative_vectors.T).float()  # [N, M]
    if logq:
        pool = (negative_idx.shape[0] - negatives.shape[0], negatives.shape[0])
        positive = positive - pool_log_q(target, item_log_q, *pool)[:, None]
        negative = negative - pool_log_q(negative_idx, item_log_q, *pool)[None, :]
    negative = negative.masked_fill(negative_idx[None, :] == target[:, None], -math.inf)
    logits = torch.cat([positive, negative], dim=1)  # [N, 1 + M], positive first
    return _reduce(torch.logsumexp(logits, dim=1) - logits[:, 0], reduction)


def in_batch_rows(
    n: int, cap: int | None, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor | None:
    """Which of a batch's n targets form the in-batch pool: None (all of them) when n <= cap,
    else `cap` rows drawn without replacement -> [cap] long on `device`."""
    if cap is None or n <= cap:
        return None
    draw_device = generator.device if generator is not None else device
    return torch.randperm(n, generator=generator, device=draw_device)[:cap].to(device)


def row_negatives(
    n_rows: int, n_items: int, k: int, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """k item_idx per row, drawn uniformly with replacement from 1..n_items -> [n_rows, k]."""
    draw_device = generator.device if generator is not None else device
    shape = (n_rows, k)
    return torch.randint(1, n_items + 1, shape, generator=generator, device=draw_device).to(device)


def _row_scores(
    query: torch.Tensor, item_idx: torch.Tensor, item_vectors: ItemVectors, n_items: int
) -> torch.Tensor:
    """query [N, d] . item_vectors(item_idx [N, k]) -> [N, k]: through the [N, n_items] logits
    for a small catalogue (cheaper than N x k gathered vectors), else gathered row by row."""
    if n_items * query.shape[0] <= item_idx.numel() * query.shape[1]:
        every = query @ item_vectors(torch.arange(n_items + 1, device=query.device)).T
        return every.gather(1, item_idx)
    return torch.einsum("nd,nkd->nk", query, item_vectors(item_idx))


def gbce_loss(
    query: torch.Tensor,
    target: torch.Tensor,
    item_vectors: ItemVectors,
    n_items: int,
    n_negatives: int,
    t: float,
    generator: torch.Generator | None = None,
    negatives: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """gBCE (gSASRec): -log σ(s+)^β - Σ_neg log(1 - σ(s-)), over k uniform negatives per row.

    Each row (a position of a sequence) draws its own k negatives, as gSASRec does: negatives
    shared by a whole batch were each pushed down by every position of it at once, and SASRec
    stayed at random level on ML-100K while the loss fell. α = k / (n_items - 1),
    β = α (t (1 - 1/α) + 1/α): t = 0 gives β = 1 (plain BCE), t = 1 gives β = α (calibrated).
    query [N, d], target [N] -> scalar (or [N]); `negatives` [N, k] (or [k], shared) replaces
    the draw.
    """
    if n_items < 2:
        raise RecstackError(f"gbce needs n_items >= 2 (got {n_items}); use kind='ce'")
    n = target.shape[0]
    if negatives is None:
        negatives = row_negatives(n, n_items, n_negatives, query.device, generator)
    elif negatives.dim() == 1:
        negatives = negatives[None, :].expand(n, -1)
    alpha = negatives.shape[1] / (n_items - 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    positive = (query * item_vectors(target)).sum(-1).float()  # [N]
    negative = _row_scores(query, negatives, item_vectors, n_items).float()  # [N, k]
    log_not_negative = F.logsigmoid(-negative)  # log(1 - σ(s-)), [N, k]
    log_not_negative = log_not_negative.masked_fill(negatives == target[:, None], 0.0)
    return _reduce(-beta * F.logsigmoid(positive) - log_not_negative.sum(1), reduction)


class RecLoss(nn.Module):
    """The loss named by `config`. item_counts [n_items + 1]: training frequency of each item
    (PAD entry ignored), used for in-batch logQ; None means uniform. Counts are raw counts:
    counts below 1 are raised to 1 (an item that appears in a batch has been seen)."""

    def __init__(self, config: LossConfig, n_items: int, item_counts: torch.Tensor | None = None):
        super().__init__()
        if n_items < 1 or (config.kind == "gbce" and n_items < 2):
            raise RecstackError(f"RecLoss n_items={n_items} is too small for kind={config.kind!r}")
        if item_counts is None:
            item_counts = torch.ones(n_items + 1)
        item_counts = torch.as_tensor(item_counts).detach().float()
        if item_counts.shape != (n_items + 1,):
            raise RecstackError(
                f"item_counts has shape {tuple(item_counts.shape)}, expected ({n_items + 1},): "
                "one count per item_idx 0..n_items, PAD_IDX included"
            )
        if not torch.isfinite(item_counts).all() or (item_counts < 0).any():
            raise RecstackError("item_counts must be finite and >= 0; pass raw training counts")
        item_counts = item_counts.clamp(min=1.0)
        item_counts[PAD_IDX] = 0.0
        self.config, self.n_items = config, n_items
        self.register_buffer("item_counts", item_counts, persistent=False)

    def item_log_q(self) -> torch.Tensor:
        """log p_j [n_items + 1]: log probability that one in-batch draw is item j."""
        return torch.log(self.item_counts / self.item_counts.sum())

    def forward(
        self,
        query: torch.Tensor,
        target: torch.Tensor,
        item_vectors: ItemVectors,
        generator: torch.Generator | None = None,
        reduction: Reduction = "mean",
        bonus: Bonus | None = None,
    ) -> torch.Tensor:
        """query [N, d] float, target [N] long in 1..n_items -> scalar mean loss (or [N]).
        `bonus`: per-row logits added to some items (full CE only; see full_cross_entropy)."""
        c = self.config
        if c.kind == "ce":
            return full_cross_entropy(
                query, target, item_vectors, self.n_items, c.chunk_items, reduction, bonus
            )
        if bonus is not None:
            raise RecstackError(f"a logit bonus needs loss kind 'ce', not {c.kind!r}")
        if c.kind == "gbce":
            return gbce_loss(
                query, target, item_vectors, self.n_items, c.n_negatives, c.gbce_t, generator,
                reduction=reduction,
            )  # fmt: skip
        return sampled_softmax(
            query,
            target,
            item_vectors,
            c.negatives,
            c.n_negatives,
            self.item_log_q(),
            c.logq,
            generator,
            reduction=reduction,
            in_batch_cap=c.in_batch_cap,
        )

    def masked(
        self,
        query: torch.Tensor,
        target: torch.Tensor,
        item_vectors: ItemVectors,
        bonus: Bonus | None = None,
    ) -> torch.Tensor:
        """The mean loss over the rows whose target is not PAD_IDX, at fixed shapes: no row is
        taken out, so a CUDA step needs no host sync to count them (PAD rows weigh 0).

        In-batch negatives would draw the PAD rows' stand-in targets, so those kinds take the
        rows out instead (a data-dependent shape)."""
        keep = target != PAD_IDX
        if self.config.kind == "sampled" and self.config.negatives != "uniform":
            return self(query[keep], target[keep], item_vectors)
        per_row = self(query, target.clamp(min=1), item_vectors, reduction="none", bonus=bonus)
        weight = keep.to(per_row.dtype)
        return (per_row * weight).sum() / weight.sum().clamp(min=1.0)

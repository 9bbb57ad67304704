"""Reference models every trained model is compared with (docs/architecture.md §5).

Each baseline is fitted on the history events an evaluation allows (`history_frame(frame,
target)`: TRAIN for validation, TRAIN + VALID for test) and is then a score function for
`evaluate`: `baseline(batch) -> [B, n_items + 1]`. Scores for a user come only from the batch's
history (events strictly before the user's targets), never from a lookup by user id.

- `MostPop`: item scores = number of history events of the item (same list for everyone).
- `EASE` (Steck 2019, "Embarrassingly Shallow Autoencoders"): with binary X (users x items) from
  the history events, P = (XᵀX + λI)⁻¹ and B = I − P · diag(1 / diag(P)) (so B_ii = 0);
  scores = x_u B. λ is chosen on validation NDCG@10 by `select_ease_l2`. XᵀX is built from a
  scipy sparse X; the n_items x n_items solve is dense (float64 on `device`), hence `max_items`.
- `Markov`: first-order transitions. Scores = count(last history item -> j) over consecutive
  history events of all users, plus popularity / (max popularity + 1) < 1, which only breaks ties
  among equal counts (and ranks by popularity when the last item has no outgoing transition).
"""

from collections.abc import Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from recstack.errors import RecstackError
from recstack.eval_set import EvalSet
from recstack.schema import ITEM_IDX, PAD_IDX, USER_IDX
from recstack.training.eval.evaluator import EvalBatch, evaluate, resolve_device

EASE_L2_GRID = (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)
EASE_MAX_ITEMS = 20_000  # dense float64 n x n solve: ~10 GB of RAM at 20k items
SELECTION_METRIC = "ndcg@10"


def _items(history: pl.DataFrame) -> np.ndarray:
    return history[ITEM_IDX].to_numpy().astype(np.int64)


def item_counts(history: pl.DataFrame, n_items: int) -> np.ndarray:
    """[n_items + 1] number of events per item (PAD = 0)."""
    counts = np.bincount(_items(history), minlength=n_items + 1).astype(np.float64)
    counts[PAD_IDX] = 0.0
    return counts


class MostPop:
    """Most popular items by number of history events; ties broken by the evaluator."""

    name = "MostPop"

    def __init__(self) -> None:
        self._scores: torch.Tensor | None = None

    def fit(self, history: pl.DataFrame, n_items: int) -> "MostPop":
        self._scores = torch.from_numpy(item_counts(history, n_items).astype(np.float32))
        return self

    def hyperparameters(self) -> dict:
        return {}

    def __call__(self, batch: EvalBatch) -> torch.Tensor:
        if self._scores is None:
            raise RecstackError("MostPop is not fitted; call fit(history, n_items) first")
        if self._scores.device != batch.users.device:
            self._scores = self._scores.to(batch.users.device)
        return self._scores.expand(batch.users.shape[0], -1)


def item_gram(history: pl.DataFrame, n_items: int) -> np.ndarray:
    """Dense [n_items, n_items] float64 XᵀX of the binary user x item matrix (item i at i - 1)."""
    pairs = history.select(USER_IDX, ITEM_IDX).unique()
    users = pairs[USER_IDX].to_numpy().astype(np.int64)
    items = pairs[ITEM_IDX].to_numpy().astype(np.int64) - 1
    n_users = int(users.max()) + 1 if users.size else 0
    x = sp.csr_matrix(
        (np.ones(users.shape[0], dtype=np.float64), (users, items)), shape=(n_users, n_items)
    )
    return (x.T @ x).toarray()


def ease_weights(gram: np.ndarray, l2: float, device: torch.device) -> torch.Tensor:
    """[n_items, n_items] float32 EASE item-item weights B (zero diagonal) from XᵀX."""
    if l2 <= 0:
        raise RecstackError(f"EASE l2 must be > 0, got {l2}")
    a = torch.from_numpy(gram).to(device=device, dtype=torch.float64, copy=True)  # gram is reused
    a.diagonal().add_(l2)
    p = torch.cholesky_inverse(torch.linalg.cholesky(a))
    del a
    p.div_(-p.diagonal().clone()[None, :])  # in place: B_ij = -P_ij / P_jj
    p.fill_diagonal_(0.0)
    return p.to(torch.float32)


class EASE:
    """EASE item-item model; see the module docstring. Refuses catalogues above max_items."""

    name = "EASE"

    def __init__(
        self,
        l2: float = 500.0,
        max_items: int = EASE_MAX_ITEMS,
        device: str | torch.device | None = None,
    ) -> None:
        self.l2 = float(l2)
        self.max_items = max_items
        self.device = resolve_device(device)
        self._weights: torch.Tensor | None = None

    def check_catalogue(self, n_items: int) -> None:
        if n_items > self.max_items:
            raise RecstackError(
                f"EASE needs a dense {n_items} x {n_items} item-item matrix but max_items is "
                f"{self.max_items}: filter the dataset to a k-core (e.g. items with >= 5 "
                "interactions) or raise max_items"
            )

    def fit(self, history: pl.DataFrame, n_items: int) -> "EASE":
        self.check_catalogue(n_items)
        return self.fit_gram(item_gram(history, n_items))

    def fit_gram(self, gram: np.ndarray) -> "EASE":
        """Fit from a precomputed XᵀX (reused across a λ grid)."""
        self.check_catalogue(gram.shape[0])
        self._weights = ease_weights(gram, self.l2, self.device)
        return self

    def hyperparameters(self) -> dict:
        return {"l2": self.l2}

    def __call__(self, batch: EvalBatch) -> torch.Tensor:
        if self._weights is None:
            raise RecstackError("EASE is not fitted; call fit(history, n_items) first")
        weights = self._weights.to(batch.history.device)
        n_rows, n_items = batch.history.shape[0], weights.shape[0]
        # score = (binary history row) @ weights, with the history as a sparse matrix: the sum
        # of the weight rows of a user's distinct items, B x H x n instead of B x n x n
        rows = torch.arange(n_rows, device=weights.device).repeat_interleave(batch.history.shape[1])
        items = batch.history.flatten().to(weights.device)
        real = items != PAD_IDX
        index = torch.stack([rows[real], items[real] - 1])
        x = torch.sparse_coo_tensor(
            index,
            torch.ones(index.shape[1], dtype=weights.dtype, device=weights.device),
            (n_rows, n_items),
            check_invariants=True,  # an id beyond the vocab is an error here, not a segfault
        ).coalesce()  # a repeated item sums to > 1: set it back to 1 (binary, as in the fit)
        x = torch.sparse_coo_tensor(
            x.indices(), torch.ones_like(x.values()), x.shape, check_invariants=False
        )  # the checked, coalesced indices again
        scores = torch.zeros(n_rows, n_items + 1, device=weights.device, dtype=weights.dtype)
        scores[:, 1:] = torch.sparse.mm(x, weights)  # column 0 (PAD) stays 0, masked anyway
        return scores


def select_ease_l2(
    history: pl.DataFrame,
    valid_set: EvalSet,
    l2_grid: Sequence[float] = EASE_L2_GRID,
    max_items: int = EASE_MAX_ITEMS,
    device: str | torch.device | None = None,
    metric: str = SELECTION_METRIC,
) -> tuple[float, dict[float, float]]:
    """(best λ, {λ: validation metric}) for EASE fitted on `history` (the TRAIN events).

    Only the validation targets are looked at; ties between λ values go to the first in the grid.
    """
    if not l2_grid:
        raise RecstackError("the EASE λ grid is empty; pass at least one value")
    if valid_set.n_users == 0:
        raise RecstackError(
            "no validation targets to choose EASE's λ; use a split with validation events "
            "or pass a single λ"
        )
    k = int(metric.split("@")[1])
    model = EASE(max_items=max_items, device=device)
    model.check_catalogue(valid_set.n_items)
    gram = item_gram(history, valid_set.n_items)
    curve: dict[float, float] = {}
    for l2 in l2_grid:
        model.l2 = float(l2)
        model.fit_gram(gram)
        curve[float(l2)] = evaluate(model, valid_set, ks=(k,), device=model.device).metrics[metric]
    best = max(curve, key=lambda lam: curve[lam])  # first maximum in grid order
    return best, curve


class Markov:
    """First-order item -> next item transition counts, popularity as the tie-break."""

    name = "Markov"

    def __init__(self) -> None:
        self._transitions: sp.csr_matrix | None = None
        self._tie: np.ndarray | None = None

    def fit(self, history: pl.DataFrame, n_items: int) -> "Markov":
        """`history` must be in time order per user (as `history_frame` returns it)."""
        pairs = history.select(
            pl.col(ITEM_IDX).shift(1).over(USER_IDX).alias("_prev"), pl.col(ITEM_IDX)
        ).drop_nulls()
        prev = pairs["_prev"].to_numpy().astype(np.int64)
        nxt = pairs[ITEM_IDX].to_numpy().astype(np.int64)
        self._transitions = sp.csr_matrix(
            (np.ones(prev.shape[0], dtype=np.float32), (prev, nxt)),
            shape=(n_items + 1, n_items + 1),
        )  # duplicates are summed; row PAD_IDX stays empty
        counts = item_counts(history, n_items)
        self._tie = (counts / (counts.max() + 1.0)).astype(np.float32)
        return self

    def hyperparameters(self) -> dict:
        return {}

    def __call__(self, batch: EvalBatch) -> torch.Tensor:
        if self._transitions is None or self._tie is None:
            raise RecstackError("Markov is not fitted; call fit(history, n_items) first")
        lengths = batch.lengths.clamp(min=1) - 1
        last = batch.history.gather(1, lengths[:, None]).squeeze(1)
        last = torch.where(batch.lengths > 0, last, PAD_IDX).cpu().numpy()
        scores = self._transitions[last].toarray() + self._tie[None, :]
        return torch.from_numpy(scores).to(batch.users.device)

"""The request mix of a load test, drawn from a prepared recstack dataset.

Default: 80 % `POST /v1/recommend`, 15 % `POST /v1/events`, 5 % `GET /v1/similar/{id}`.
- Users are drawn with a popularity skew: P(user) ∝ (its interactions in the dataset)^skew,
  so heavy users come back often (skew 0 = uniform). A `cold` share of recommend calls uses
  fresh ids the service has never seen (cold start).
- A share of recommend calls asks for explanations (`explain: true`).
- Events are one interaction each (view / click / purchase) of a drawn user with an item
  drawn by item popularity; similar-items calls use items drawn by popularity too.
Events change the service's state (histories, event log): load a test deployment.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from open_loop import Call

from recstack import schema

DEFAULT_MIX = {"recommend": 0.80, "events": 0.15, "similar": 0.05}
EVENT_TYPES = ("view", "click", "purchase")
EVENT_TYPE_WEIGHTS = (0.5, 0.4, 0.1)


def parse_mix(text: str) -> dict[str, float]:
    """ "recommend=0.8,events=0.15,similar=0.05" -> shares summing to 1 (ValueError if bad)."""
    mix = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        name = name.strip()
        if name not in DEFAULT_MIX:
            raise ValueError(f"unknown endpoint {name!r} in the mix; use {', '.join(DEFAULT_MIX)}")
        try:
            mix[name] = float(share)
        except ValueError:
            raise ValueError(f"{part!r}: write endpoint=share, e.g. recommend=0.8") from None
        if mix[name] < 0:
            raise ValueError(f"{part!r}: shares must be >= 0")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("the mix needs a positive share for at least one endpoint")
    return {name: share / total for name, share in mix.items()}


@dataclass(frozen=True)
class Catalogue:
    """External ids of a dataset's users and items with their interaction counts."""

    user_ids: list[str]
    user_counts: np.ndarray  # [n_users]
    item_ids: list[str]
    item_counts: np.ndarray  # [n_items]

    @classmethod
    def from_dataset(cls, dataset: Path) -> "Catalogue":
        """Read users.parquet, items.parquet and interactions.parquet of a prepared dataset."""
        files = {name: dataset / f"{name}.parquet" for name in ("users", "items", "interactions")}
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            raise ValueError(
                f"{dataset} is not a prepared dataset (missing {', '.join(missing)}); "
                "run `recstack data prepare` or pass --dataset"
            )
        users = pq.read_table(files["users"], columns=[schema.USER_IDX, schema.USER_ID])
        items = pq.read_table(files["items"], columns=[schema.ITEM_IDX, schema.ITEM_ID])
        log = pq.read_table(files["interactions"], columns=[schema.USER_IDX, schema.ITEM_IDX])
        user_idx = users[schema.USER_IDX].to_numpy()
        item_idx = items[schema.ITEM_IDX].to_numpy()
        user_counts = np.bincount(log[schema.USER_IDX].to_numpy(), minlength=user_idx.max() + 1)
        item_counts = np.bincount(log[schema.ITEM_IDX].to_numpy(), minlength=item_idx.max() + 1)
        return cls(
            user_ids=[str(u) for u in users[schema.USER_ID].to_pylist()],
            user_counts=user_counts[user_idx],
            item_ids=[str(i) for i in items[schema.ITEM_ID].to_pylist()],
            item_counts=item_counts[item_idx],
        )


class Mix:
    """Call i of a load test: a pure function of (seed, i), drawn up front for n calls."""

    def __init__(
        self,
        catalogue: Catalogue,
        n: int,
        mix: dict[str, float] = DEFAULT_MIX,
        cold: float = 0.05,
        explain: float = 0.1,
        skew: float = 1.0,
        k: int = 10,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        names = list(mix)
        self.names = names
        self.kind = rng.choice(len(names), size=n, p=[mix[name] for name in names])  # [n]
        self.user = rng.choice(
            len(catalogue.user_ids), size=n, p=_weights(catalogue.user_counts, skew)
        )
        self.item = rng.choice(
            len(catalogue.item_ids), size=n, p=_weights(catalogue.item_counts, 1.0)
        )
        self.cold = rng.random(n) < cold  # [n] bool
        self.explain = rng.random(n) < explain
        self.event_type = rng.choice(len(EVENT_TYPES), size=n, p=EVENT_TYPE_WEIGHTS)
        self.catalogue, self.k, self.seed = catalogue, k, seed
        self.now = int(time.time())

    def __call__(self, i: int) -> Call:
        kind = self.names[self.kind[i]]
        user_id = self.catalogue.user_ids[self.user[i]]
        item_id = self.catalogue.item_ids[self.item[i]]
        if kind == "recommend":
            if self.cold[i]:
                user_id = f"load-cold-{self.seed}-{i}"
            body = {"user_id": user_id, "k": self.k, "explain": bool(self.explain[i])}
            return Call("recommend", "POST", "/v1/recommend", body)
        if kind == "events":
            event = {"user_id": user_id, "item_id": item_id, "ts": self.now + i // 1000}
            event["type"] = EVENT_TYPES[self.event_type[i]]
            return Call("events", "POST", "/v1/events", {"events": [event]})
        return Call("similar", "GET", f"/v1/similar/{item_id}?k={self.k}")


def _weights(counts: np.ndarray, skew: float) -> np.ndarray:
    """Probabilities ∝ max(count, 1)^skew."""
    weights = np.maximum(counts, 1).astype(np.float64) ** skew
    return weights / weights.sum()

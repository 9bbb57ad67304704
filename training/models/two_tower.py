"""Two-tower retrieval model: a user tower and an item tower meeting in one vector space.

Item tower: id embedding + projected multi-hot tags + categorical item features, summed, then a
residual MLP. Item features live in persistent buffers (`item_tags`, `item_cats`, row i =
item_idx i) filled by `set_item_features`, so the tower takes only item_idx and the features
travel with the state_dict.

User tower: the recent history (right-padded with PAD_IDX, real items first) as tokens =
LayerNorm(item-id embedding, shared with the item tower, + recency embedding, 0 = the most
recent item); the per-token norm makes even the mean depend on order. Tokens at positions
>= lengths are zeroed, so neither appended PAD columns nor whatever ids sit there change the
output. Pooling is a masked mean, or one multi-head attention readout whose query comes from
the last item's token and the context, over the history plus one learned always-valid "null"
key/value (so a cold user, lengths == 0, gets no NaN); the last item's token is added to the
readout. The pooled history, context and user-attribute embeddings go through a residual MLP
to `dim` (dropout in training); with similarity="cosine" both towers' outputs are L2-normalised.

Categorical codes (context, user, item features) count 0 as unknown; codes outside a field's
range are read as 0 too, and so are history ids outside 0..n_items. No Python branch depends
on tensor values, so the towers export with torch.onnx.export(dynamo=True).
"""

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from recstack.errors import RecstackError
from recstack.schema import PAD_IDX
from recstack.training.models.init import init_weights
from recstack.training.models.similarity import check_similarity, normalise

POOLINGS = ("attention", "mean")


@dataclass
class FeatureSizes:
    """Cardinalities of the categorical inputs, each INCLUDING code 0 = unknown/missing."""

    n_items: int  # real items 1..n_items, 0 = PAD
    context: dict[str, int] = field(default_factory=dict)  # e.g. {"hour": 25, "weekday": 8}
    user: dict[str, int] = field(default_factory=dict)  # e.g. {"gender": 3, "age": 8}
    item_tags: int = 0  # width of the multi-hot tag vector (ML genres: 19), 0 = none
    item_cats: dict[str, int] = field(default_factory=dict)  # e.g. {"year": 12}

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise RecstackError(f"two-tower n_items must be >= 1, got {self.n_items}")
        if self.item_tags < 0:
            raise RecstackError(f"two-tower item_tags must be >= 0, got {self.item_tags}")
        for kind in ("context", "user", "item_cats"):
            for name, size in getattr(self, kind).items():
                if not isinstance(name, str) or not name or "." in name:
                    raise RecstackError(
                        f"two-tower {kind} feature name {name!r} must be a non-empty string "
                        "without '.'"
                    )
                if size < 1:
                    raise RecstackError(
                        f"two-tower {kind} feature {name!r} needs cardinality >= 1 "
                        f"(code 0 = unknown included), got {size}"
                    )


@dataclass
class TwoTowerConfig:
    dim: int = 64  # output embedding size
    history_len: int = 50  # most recent history items the user tower reads
    pooling: Literal["attention", "mean"] = "attention"
    n_heads: int = 2
    dropout: float = 0.1  # in the user tower's MLP, training only
    similarity: Literal["dot", "cosine"] = "cosine"
    temperature: float = 0.05  # logits = similarity / temperature

    def __post_init__(self) -> None:
        for name in ("dim", "history_len", "n_heads"):
            value = getattr(self, name)
            if value < 1:
                raise RecstackError(f"two-tower {name} must be >= 1, got {value}")
        if self.dim % self.n_heads:
            raise RecstackError(
                f"two-tower dim ({self.dim}) must be divisible by n_heads ({self.n_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise RecstackError(f"two-tower dropout must be in [0, 1), got {self.dropout}")
        if self.pooling not in POOLINGS:
            raise RecstackError(
                f"two-tower pooling must be one of {POOLINGS}, got {self.pooling!r}"
            )
        check_similarity("two-tower", self.similarity, self.temperature)


def _mlp(d_in: int, dim: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
    )


def _known(codes: torch.Tensor, size: int) -> torch.Tensor:
    """Codes outside 0..size-1 -> 0 (unknown)."""
    return torch.where((codes >= 0) & (codes < size), codes, torch.zeros_like(codes))


class TwoTower(nn.Module):
    def __init__(self, config: TwoTowerConfig, sizes: FeatureSizes) -> None:
        super().__init__()
        self.config = config
        self.sizes = sizes
        dim, n_rows = config.dim, sizes.n_items + 1

        # item features, row i = item_idx i (row PAD_IDX stays zero)
        self.register_buffer("item_tags", torch.zeros(n_rows, sizes.item_tags))
        self.register_buffer(
            "item_cats", torch.zeros(n_rows, len(sizes.item_cats), dtype=torch.long)
        )

        # item tower (id_emb is shared with the user tower's history tokens)
        self.id_emb = nn.Embedding(n_rows, dim, padding_idx=PAD_IDX)
        self.tag_proj = nn.Linear(sizes.item_tags, dim, bias=False) if sizes.item_tags else None
        self.item_cat_emb = nn.ModuleDict(
            {k: nn.Embedding(n, dim) for k, n in sizes.item_cats.items()}
        )
        self.item_mlp = _mlp(dim, dim)

        # user tower
        self.recency_emb = nn.Embedding(config.history_len, dim)
        self.token_norm = nn.LayerNorm(dim)  # per token: makes the mean depend on recency
        self.context_emb = nn.ModuleDict(
            {k: nn.Embedding(n, dim) for k, n in sizes.context.items()}
        )
        self.user_emb = nn.ModuleDict({k: nn.Embedding(n, dim) for k, n in sizes.user.items()})
        if config.pooling == "attention":
            self.query = nn.Linear(dim * (1 + len(sizes.context)), dim)
            self.key = nn.Linear(dim, dim)
            self.value = nn.Linear(dim, dim)
            self.null_kv = nn.Parameter(torch.zeros(2, dim))  # always-valid key/value
            self.attn_out = nn.Linear(dim, dim)
        n_fields = 1 + len(sizes.context) + len(sizes.user)
        self.user_mlp = _mlp(dim * n_fields, dim, config.dropout)
        self.apply(init_weights)
        if config.pooling == "attention":
            nn.init.normal_(self.null_kv, std=0.02)

    # ---- item features ------------------------------------------------------------------

    @torch.no_grad()
    def set_item_features(
        self, tags: torch.Tensor | None = None, cats: torch.Tensor | None = None
    ) -> None:
        """Copy item features into the buffers; None leaves that buffer as it is.

        tags [n_items + 1, item_tags] (row i = item_idx i) or [n_items, item_tags] (row i =
        item_idx i + 1, as in items.parquet), multi-hot or any float weights.
        cats [n_items + 1 or n_items, len(item_cats)] integer codes, column j = the j-th
        key of FeatureSizes.item_cats, each in 0..size-1. The PAD row is set to zero.
        """
        for name, given, buffer in (("tags", tags, self.item_tags), ("cats", cats, self.item_cats)):
            if given is None:
                continue
            n_items, width = self.sizes.n_items, buffer.shape[1]
            if given.dim() != 2 or given.shape[0] not in (n_items, n_items + 1):
                raise RecstackError(
                    f"two-tower item {name} must be [{n_items + 1} or {n_items}, {width}] "
                    f"(rows = items), got {list(given.shape)}"
                )
            if given.shape[1] != width:
                raise RecstackError(
                    f"two-tower item {name} must have {width} columns (FeatureSizes), "
                    f"got {given.shape[1]}"
                )
            if name == "cats":
                if given.is_floating_point() or given.is_complex():
                    raise RecstackError("two-tower item cats must be integer codes")
                for j, (key, size) in enumerate(self.sizes.item_cats.items()):
                    col = given[:, j]
                    if col.numel() and (int(col.min()) < 0 or int(col.max()) >= size):
                        raise RecstackError(
                            f"two-tower item cat {key!r} codes must be in 0..{size - 1}, got "
                            f"{int(col.min())}..{int(col.max())}; raise its size in FeatureSizes"
                        )
            rows = given.to(device=buffer.device, dtype=buffer.dtype)
            buffer[buffer.shape[0] - rows.shape[0] :] = rows
            buffer[PAD_IDX] = 0

    # ---- towers -------------------------------------------------------------------------

    def item_vectors(self, item_idx: torch.Tensor) -> torch.Tensor:
        """item_idx [*] (0..n_items) -> item vectors [*, dim]."""
        h = self.id_emb(item_idx)  # [*, d]
        if self.tag_proj is not None:
            h = h + self.tag_proj(self.item_tags[item_idx])  # [*, T] -> [*, d]
        codes = self.item_cats[item_idx]  # [*, C]
        for j, emb in enumerate(self.item_cat_emb.values()):
            h = h + emb(codes[..., j])
        return normalise(h + self.item_mlp(h), self.config.similarity)

    def _field_codes(
        self,
        given: dict[str, torch.Tensor] | None,
        embs: nn.ModuleDict,
        kind: str,
        like: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Embeddings [B, d] of every field in `embs` (missing key -> code 0)."""
        given = given or {}
        unknown = sorted(set(given) - set(embs))
        if unknown:
            raise RecstackError(
                f"two-tower got unknown {kind} feature(s) {unknown}; this model takes "
                f"{sorted(embs)} (a missing one counts as code 0 = unknown)"
            )
        out = []
        for name, emb in embs.items():
            codes = given.get(name)
            codes = torch.zeros_like(like) if codes is None else codes.reshape(like.shape)
            out.append(emb(_known(codes, emb.num_embeddings)))
        return out

    def user_vectors(
        self,
        history: torch.Tensor,
        lengths: torch.Tensor,
        context: dict[str, torch.Tensor] | None = None,
        user: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """history [B, L] right-padded item_idx, lengths [B] -> user vectors [B, dim].

        The caller passes the recent window: L <= history_len (recency is clamped to
        history_len - 1 otherwise). Positions >= lengths are ignored. context/user map a field
        name to codes [B]; missing fields count as 0 (unknown), unknown names raise.
        """
        cfg = self.config
        length = history.shape[1]
        positions = torch.arange(length, device=history.device)  # [L]
        valid = positions[None, :] < lengths[:, None]  # [B, L]
        items = torch.where(valid, _known(history, self.sizes.n_items + 1), PAD_IDX)
        recency = (lengths[:, None] - 1 - positions[None, :]).clamp(0, cfg.history_len - 1)
        mask = valid.unsqueeze(-1).to(self.id_emb.weight.dtype)  # [B, L, 1]
        tokens = self.token_norm(self.id_emb(items) + self.recency_emb(recency))  # [B, L, d]
        tokens = tokens * mask  # padding tokens are exactly zero

        context_vecs = self._field_codes(context, self.context_emb, "context", lengths)
        user_vecs = self._field_codes(user, self.user_emb, "user", lengths)

        if cfg.pooling == "mean":
            pooled = tokens.sum(1) / mask.sum(1).clamp(min=1.0)  # [B, d]
        else:
            is_last = (recency == 0) & valid  # [B, L], one True per warm user
            last = (tokens * is_last.unsqueeze(-1).to(tokens.dtype)).sum(1)  # [B, d]
            pooled = last + self._attend(last, context_vecs, tokens, valid)
        x = torch.cat([pooled, *context_vecs, *user_vecs], dim=-1)  # [B, d * fields]
        return normalise(pooled + self.user_mlp(x), self.config.similarity)

    def _attend(
        self,
        last: torch.Tensor,
        context_vecs: list[torch.Tensor],
        tokens: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """One-query attention over [null, history tokens] -> readout [B, d]."""
        b, length, dim = tokens.shape
        heads = self.config.n_heads
        q = self.query(torch.cat([last, *context_vecs], dim=-1))  # [B, d]
        q = q.view(b, heads, 1, dim // heads)  # [B, H, 1, d/H]
        null_k, null_v = (t.expand(b, 1, dim) for t in self.null_kv.unsqueeze(1))
        k = torch.cat([null_k, self.key(tokens)], dim=1)  # [B, L + 1, d]
        v = torch.cat([null_v, self.value(tokens)], dim=1)
        k, v = (t.view(b, length + 1, heads, dim // heads).transpose(1, 2) for t in (k, v))
        keep = torch.cat([valid.new_ones((b, 1)), valid], dim=1)  # [B, L + 1]
        bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~keep, torch.finfo(q.dtype).min)[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, H, 1, d/H]
        return self.attn_out(y.reshape(b, dim))

    def forward(
        self,
        history: torch.Tensor,
        lengths: torch.Tensor,
        context: dict[str, torch.Tensor] | None = None,
        user: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The user tower (what serving exports): -> user vectors [B, dim]."""
        return self.user_vectors(history, lengths, context, user)

    # ---- scores -------------------------------------------------------------------------

    def logits(self, user_vec: torch.Tensor, item_vec: torch.Tensor) -> torch.Tensor:
        """user_vec [B, d], item_vec [N, d] -> similarity / temperature [B, N]."""
        return user_vec @ item_vec.T / self.config.temperature

    def all_item_vectors(self) -> torch.Tensor:
        """Vectors of the whole catalogue [n_items + 1, d] (row PAD_IDX is meaningless)."""
        return self.item_vectors(
            torch.arange(self.sizes.n_items + 1, device=self.id_emb.weight.device)
        )

    def score_all(
        self,
        history: torch.Tensor,
        lengths: torch.Tensor,
        context: dict[str, torch.Tensor] | None = None,
        user: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """-> logits over the catalogue [B, n_items + 1]; column PAD_IDX is meaningless."""
        return self.logits(
            self.user_vectors(history, lengths, context, user), self.all_item_vectors()
        )

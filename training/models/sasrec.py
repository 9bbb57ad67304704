"""SASRec (Kang & McAuley 2018): a causal transformer over a user's item sequence.

Input is right-padded with PAD_IDX (real items first, then zeros). Positions are learned and
count from the first item of the window, so with causal attention a position never sees the
padding after it: appending PAD columns changes nothing (the ONNX export relies on this,
docs/architecture.md §7). The next-item scores are the hidden state at a position times the
item embedding table (the output layer is tied to the input embeddings unless `tie_output` is
false). With similarity="cosine" the states and the item vectors are L2-normalised, as in the
two-tower model, and training divides the logits by `temperature`.

The transition term (`followers` > 0) adds to the score of each item j that followed the last
history item in the training sequences gate(state) * log1p(count of that transition), where
gate = softplus(linear(state)) >= 0 is learned. The table (training/data/transitions.py) holds
each item's `followers` most frequent next items; it is a buffer, so checkpoints carry it. It
memorises transitions a 64-dim tied table spreads out: on Amazon Beauty, first-order Markov
beat SASRec by 0.50 to 0.36 NDCG@10 on the users whose last transition occurs in TRAIN
(benchmarks/README.md). Training counts each target's own occurrence out of its transition
(leave-one-out), so the gate learns what the other occurrences predict, as at test time.

Blocks are pre-norm: x + Attn(LN(x)), x + FFN(LN(x)), with attention from
`F.scaled_dot_product_attention(is_causal=True)`; a final LayerNorm follows the last block.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from recstack.errors import RecstackError
from recstack.schema import PAD_IDX
from recstack.training.models.init import init_weights
from recstack.training.models.similarity import check_similarity, normalise

GATE_INIT = math.log(math.e - 1.0)  # softplus(GATE_INIT) = 1: the gate starts at 1


@dataclass
class SASRecConfig:
    n_items: int = 0  # real items are 1..n_items; filled in from the dataset
    history_len: int = 200  # longest window the model reads (positions 0..history_len-1)
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 4  # feed-forward width = ffn_mult * dim
    dropout: float = 0.2  # on embeddings, attention output and feed-forward
    attn_dropout: float = 0.0
    # output item vectors: the input embeddings (True), or a table of their own, as gSASRec
    # trains gBCE (a sampled sigmoid loss pushing negatives' input embeddings apart stalls it)
    tie_output: bool = True
    similarity: Literal["dot", "cosine"] = "dot"  # cosine: states and item vectors normalised
    temperature: float = 1.0  # training logits = similarity / temperature
    followers: int = 0  # the transition term: next items kept per item (0 = off)

    def __post_init__(self) -> None:
        if self.n_items < 0:
            raise RecstackError(
                f"sasrec n_items must be >= 0 (0 = from the dataset), got {self.n_items}"
            )
        positive = {"history_len": self.history_len, "dim": self.dim}
        positive |= {"n_layers": self.n_layers, "n_heads": self.n_heads, "ffn_mult": self.ffn_mult}
        for name, value in positive.items():
            if value < 1:
                raise RecstackError(f"sasrec {name} must be >= 1, got {value}")
        if self.dim % self.n_heads:
            raise RecstackError(
                f"sasrec dim ({self.dim}) must be divisible by n_heads ({self.n_heads})"
            )
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise RecstackError(f"sasrec {name} must be in [0, 1), got {value}")
        check_similarity("sasrec", self.similarity, self.temperature)
        if self.followers < 0:
            raise RecstackError(f"sasrec followers must be >= 0 (0 = off), got {self.followers}")
        if self.followers and (self.similarity != "dot" or self.temperature != 1.0):
            raise RecstackError(
                "sasrec followers (the transition term) needs similarity 'dot' and "
                f"temperature 1 (got {self.similarity!r}, {self.temperature}); set followers: 0"
            )


def last_items(items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """items [B, L] right-padded, lengths [B] (>= 1) -> each row's last real item [B]."""
    return items.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.out = nn.Linear(config.dim, config.dim)
        self.attn_dropout = config.attn_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape  # [B, L, d]
        q, k, v = self.qkv(x).split(dim, dim=-1)
        heads = (b, length, self.n_heads, dim // self.n_heads)
        q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))  # [B, H, L, d/H]
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, length, dim))


class Block(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim)
        self.attn = CausalSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.dim)
        width = config.ffn_mult * config.dim
        self.ffn = nn.Sequential(
            nn.Linear(config.dim, width), nn.GELU(), nn.Linear(width, config.dim)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x)))
        return x + self.dropout(self.ffn(self.norm2(x)))


class SASRec(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        if config.n_items < 1:
            raise RecstackError("SASRec needs n_items >= 1 (the dataset's catalogue size)")
        self.config = config
        self.item_emb = nn.Embedding(config.n_items + 1, config.dim, padding_idx=PAD_IDX)
        self.pos_emb = nn.Embedding(config.history_len, config.dim)
        self.out_emb = (
            None
            if config.tie_output
            else nn.Embedding(config.n_items + 1, config.dim, padding_idx=PAD_IDX)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.dim)
        self.apply(init_weights)
        k = config.followers
        if k:  # the transition table (filled by set_followers or a checkpoint) and its gate
            self.register_buffer("follow_items", torch.zeros(config.n_items + 1, k).long())
            self.register_buffer("follow_counts", torch.zeros(config.n_items + 1, k))
            self.transition_gate = nn.Linear(config.dim, 1)
            nn.init.constant_(self.transition_gate.bias, GATE_INIT)

    def set_followers(self, items: torch.Tensor, counts: torch.Tensor) -> None:
        """The transition table: items, counts [n_items + 1, followers] (see the docstring)."""
        self.follow_items.copy_(torch.as_tensor(items))
        self.follow_counts.copy_(torch.as_tensor(counts))

    def transition_bonus(
        self, state: torch.Tensor, last: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """state [*, d], last item_idx [*] -> (followers of last [*, k], their bonus [*, k]).

        `exclude` [*]: each row's training target, whose own occurrence leaves its count.
        Unused slots hold PAD_IDX with bonus 0."""
        items, counts = self.follow_items[last], self.follow_counts[last]
        if exclude is not None:
            counts = (counts - (items == exclude[..., None]).to(counts.dtype)).clamp(min=0.0)
        gate = F.softplus(self.transition_gate(state))  # [*, 1]
        return items, gate * torch.log1p(counts).to(gate.dtype)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items [B, L] right-padded item_idx (L <= history_len) -> hidden states [B, L, d].

        Position t's state depends only on items[:, :t + 1].
        """
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        x = self.item_emb(items) * self.config.dim**0.5 + self.pos_emb(positions)[None]
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return normalise(self.norm(x), self.config.similarity)

    @property
    def output_table(self) -> nn.Embedding:
        """The table of the item vectors scores are dot products with (the input table when
        tied; normalised by `item_vectors` for cosine)."""
        return self.item_emb if self.out_emb is None else self.out_emb

    def item_vectors(self, item_idx: torch.Tensor) -> torch.Tensor:
        """item_idx [*] -> output vectors [*, d]."""
        return normalise(self.output_table(item_idx), self.config.similarity)

    def all_item_vectors(self) -> torch.Tensor:
        """Vectors of the whole catalogue [n_items + 1, d] (row PAD_IDX is meaningless)."""
        return normalise(self.output_table.weight, self.config.similarity)

    def last_hidden(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """items [B, L] right-padded, lengths [B] (>= 1) -> state at the last real item [B, d]."""
        hidden = self.forward(items)
        index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return hidden.gather(1, index).squeeze(1)

    def score_all(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """items [B, L] right-padded, lengths [B] -> next-item scores [B, n_items + 1]."""
        state = self.last_hidden(items, lengths)
        scores = state @ self.all_item_vectors().T
        if not self.config.followers:
            return scores
        followers, bonus = self.transition_bonus(state, last_items(items, lengths))
        return scores.scatter_add(1, followers, bonus.to(scores.dtype))

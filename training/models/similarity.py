"""How a model's query and item vectors are compared: a dot product, or the cosine (both sides
L2-normalised). Shared by SASRec and the two-tower model."""

import torch
import torch.nn.functional as F

from recstack.errors import RecstackError

SIMILARITIES = ("dot", "cosine")


def check_similarity(model: str, similarity: str, temperature: float) -> None:
    """A model config's `similarity` and `temperature`, or a one-line RecstackError."""
    if not temperature > 0.0:
        raise RecstackError(f"{model} temperature must be > 0, got {temperature}")
    if similarity not in SIMILARITIES:
        raise RecstackError(f"{model} similarity must be one of {SIMILARITIES}, got {similarity!r}")


def normalise(x: torch.Tensor, similarity: str) -> torch.Tensor:
    """x [..., d] as the similarity compares it: L2-normalised for cosine, else unchanged."""
    return F.normalize(x, dim=-1, eps=1e-6) if similarity == "cosine" else x

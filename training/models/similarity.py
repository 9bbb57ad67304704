"""How a model's query and item vectors are compared: a dot product, or the cosine (both sides
L2-normalised). Shared by SASRec and the two-tower model."""

import torch
import torch.nn.functional as F

SIMILARITIES = ("dot", "cosine")


def normalise(x: torch.Tensor, similarity: str) -> torch.Tensor:
    """x [..., d] as the similarity compares it: L2-normalised for cosine, else unchanged."""
    return F.normalize(x, dim=-1, eps=1e-6) if similarity == "cosine" else x

"""Weight initialisation shared by the models (GPT-2 style small normal init)."""

import torch
from torch import nn


def init_weights(module: nn.Module) -> None:
    """For `model.apply`: N(0, 0.02) for Linear/Embedding weights, zero biases, zero PAD rows."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()

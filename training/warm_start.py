"""Warm start: begin training from another run's weights (docs/architecture.md §6, §9).

    recstack train --config configs/train/sasrec_ml100k.yaml --init_from runs/old/checkpoints/best.ckpt

The new run's net is built from its own dataset as usual; then every parameter is copied from
the checkpoint's scoring weights (its EMA when it kept one, else its net). A table that grew
along its first dimension, the item embeddings of a dataset version with new items appended
(`recstack data extend` keeps every known item_idx), gets the old rows copied and keeps its
fresh initialisation for the new rows. Anything else that differs (another architecture, a
table that shrank, another width) is refused with one line: train from scratch instead.
Buffers (item features) are the new dataset's, never copied. A resumed run (--ckpt_path)
continues from its own checkpoint and ignores --init_from.
"""

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from recstack.errors import RecstackError
from recstack.progress import console

SOURCES = ("ema.module.", "net.")  # the weights a checkpoint serves, in order of preference


def scoring_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The parameters a checkpoint validated and exported: its EMA's, or its net's."""
    if not Path(checkpoint).is_file():
        raise RecstackError(f"--init_from {checkpoint}: no such checkpoint file")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    except Exception as exc:  # a truncated file, another format
        raise RecstackError(
            f"--init_from {checkpoint}: not a recstack checkpoint ({exc})"
        ) from None
    for prefix in SOURCES:
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    raise RecstackError(f"--init_from {checkpoint}: holds no model weights (no 'net.' keys)")


def copy_weights(net: torch.nn.Module, source: dict[str, torch.Tensor], origin: str) -> dict:
    """Copy `source` into `net`'s parameters in place; returns counts of what was copied and
    of the rows that were added (new items)."""
    params = dict(net.named_parameters())
    missing = sorted(set(params) - set(source))
    extra = sorted(set(source) - set(params) - set(dict(net.named_buffers())))
    if missing or extra:
        raise RecstackError(
            f"--init_from {origin}: another architecture (missing {missing[:3]}, unexpected "
            f"{extra[:3]}); use the same model settings or train from scratch"
        )
    grown = {}
    with torch.no_grad():
        for name, param in params.items():
            old = source[name]
            same_rest = old.shape[1:] == param.shape[1:] and old.ndim == param.ndim
            if not same_rest or (old.ndim and old.shape[0] > param.shape[0]):
                raise RecstackError(
                    f"--init_from {origin}: {name} is {tuple(old.shape)} there and "
                    f"{tuple(param.shape)} here; only tables that grew (new items appended) "
                    "are warm-started; train from scratch"
                )
            if old.ndim and old.shape[0] < param.shape[0]:
                grown[name] = param.shape[0] - old.shape[0]
                param[: old.shape[0]].copy_(old)
            else:
                param.copy_(old)
    return {"parameters": len(params), "grown": grown}


class WarmStart(Callback):
    """Copy a checkpoint's weights into the freshly built net before the first step."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.report: dict | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path is not None:  # resuming: the run's own weights were restored
            return
        weights = scoring_weights(self.checkpoint)
        self.report = copy_weights(pl_module.net, weights, str(self.checkpoint))
        if trainer.is_global_zero:
            grown = ", ".join(f"{k} +{n} rows" for k, n in self.report["grown"].items())
            added = f" ({grown}, initialised fresh)" if grown else ""
            console.print(
                f"warm start from {self.checkpoint}: {self.report['parameters']} tensors{added}"
            )

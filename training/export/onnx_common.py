"""What every ONNX export shares: exporter settings, the parity report (docs/architecture.md §7).

`export_onnx` runs torch.onnx.export(dynamo=True) with dynamic dims from torch.export.Dim and
the weights inside the .onnx file. `compare` and `parity_report` turn onnxruntime-vs-torch
checks into the manifest's "parity" figures, raising RecstackError when an export is off.
"""

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from recstack.artifact_manifest import Parity
from recstack.errors import RecstackError
from recstack.training.quiet import LEAF_SPEC, ONNX_REGISTRY_LOG, log_level, warnings_off

OPSET = 18
PARITY_ATOL = 1e-4
MAX_BATCH = 65536  # the batch Dim's upper bound


def dynamic_dim(name: str, max_size: int | None = None) -> torch.export.Dim | None:
    """A dynamic dim 1..max_size, or None (static) when max_size < 2: nothing to vary."""
    if max_size is not None and max_size < 2:
        return None
    return torch.export.Dim(name, min=1, max=max_size)


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    dynamic_shapes: tuple[dict, ...],
    input_names: list[str],
    output_names: list[str],
) -> None:
    """torch -> ONNX: dynamo, Dim-based dynamic shapes, weights in one file.

    `example` must have every dynamic dim >= 2 (a size-1 example fixes that dim).
    The exporter's known noise is off for this call only (recstack.training.quiet), and so is
    its note that a Dim shared by two inputs ("batch") names the ONNX axis once; a note about
    two different names merging still shows.
    """
    same_dim_twice = (r"# The axis name: (\w+) will not be used.*another axis: \1\.", UserWarning)
    with log_level(ONNX_REGISTRY_LOG, logging.ERROR), warnings_off(LEAF_SPEC, same_dim_twice):
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )


def parity_shapes(history_len: int) -> list[tuple[int, int]]:
    """(batch, length) pairs a sequence export is checked at: size 1, small, full, wide."""
    n = history_len
    return sorted({(1, 1), (2, 2), (3, min(7, n)), (16, n), (64, max(1, n // 2))})


def session(path: Path) -> ort.InferenceSession:
    """A CPU onnxruntime session (parity is checked on CPU, whatever serving runs on)."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def compare(got: np.ndarray, expected: np.ndarray, **where) -> dict:
    """One parity check: {**where, "max_abs_diff"}; raises on NaN/inf or a shape mismatch."""
    if got.shape != expected.shape:
        raise RecstackError(f"ONNX output shape {got.shape} != torch {expected.shape} at {where}")
    if not np.isfinite(got).all():
        raise RecstackError(f"ONNX export gives NaN/inf at {where}")
    diff = float(np.abs(got - expected).max()) if got.size else 0.0
    return {**where, "max_abs_diff": diff}


def parity_report(checks: list[dict]) -> Parity:
    """The manifest's "parity": the worst difference, atol and checks; raises if above atol."""
    worst = max((c["max_abs_diff"] for c in checks), default=0.0)
    if worst > PARITY_ATOL:
        raise RecstackError(
            f"ONNX export differs from torch by {worst:.2e} (> {PARITY_ATOL}): {checks}"
        )
    return Parity(max_abs_diff=worst, atol=PARITY_ATOL, checks=checks)

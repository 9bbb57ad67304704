"""SASRec to ONNX: the user state after a history, checked against torch.

    sasrec.onnx: items int64 [B, L] (right-padded with PAD 0), lengths int64 [B] (>= 1)
                 -> state float32 [B, d]
                 (+ followers int64 [B, k], bonus float32 [B, k] with the transition term)
    item_embeddings.npy: float32 [n_items + 1, d]; scores = state @ item_embeddings.T,
                 plus bonus[b, j] on item followers[b, j] with the transition term

Batch and length are dynamic (torch.export.Dim); the example inputs have batch and length >= 2,
since a size-1 example fixes that dimension (docs/architecture.md §7).
"""

from pathlib import Path

import numpy as np
import torch

from recstack.artifact_manifest import (
    EMBEDDINGS_FILE,
    TRANSITION_OUTPUTS,
    ArrayFile,
    ExportedModel,
    ModelKind,
    OnnxGraph,
    Parity,
)
from recstack.training.export.onnx_common import (
    MAX_BATCH,
    OPSET,
    compare,
    dynamic_dim,
    export_onnx,
    parity_report,
    parity_shapes,
    session,
)
from recstack.training.models.sasrec import SASRec, last_items

ONNX_FILE = "sasrec.onnx"
INPUTS = ("items", "lengths")
OUTPUT = "state"


class SASRecState(torch.nn.Module):
    """items [B, L], lengths [B] -> state at the last real item [B, d], and with the
    transition term the last item's followers [B, k] and their bonus [B, k]."""

    def __init__(self, net: SASRec) -> None:
        super().__init__()
        self.net = net

    def forward(self, items: torch.Tensor, lengths: torch.Tensor):
        state = self.net.last_hidden(items, lengths)
        if not self.net.config.followers:
            return state
        return state, *self.net.transition_bonus(state, last_items(items, lengths))

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT, *TRANSITION_OUTPUTS] if self.net.config.followers else [OUTPUT]


def _example(batch: int, length: int, n_items: int, generator: torch.Generator):
    items = torch.randint(1, n_items + 1, (batch, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    items[torch.arange(length)[None, :] >= lengths[:, None]] = 0  # right padding
    return items, lengths


def parity(module: SASRecState, path: Path, n_items: int, history_len: int) -> Parity:
    """Max |onnxruntime - torch| over several batch sizes and lengths; raises if off or NaN."""
    onnx_session = session(path)
    generator = torch.Generator().manual_seed(0)
    checks = []
    for batch, length in parity_shapes(history_len):
        items, lengths = _example(batch, length, n_items, generator)
        with torch.no_grad():
            expected = module(items, lengths)
        expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else [expected])]
        feeds = {"items": items.numpy(), "lengths": lengths.numpy()}
        got = onnx_session.run(module.output_names, feeds)
        for name, g, e in zip(module.output_names, got, expected, strict=True):
            checks.append(compare(g, e, batch=batch, length=length, output=name))
    return parity_report(checks)


def export_sasrec(net: SASRec, out: Path) -> ExportedModel:
    """Write sasrec.onnx and item_embeddings.npy into `out`; returns their manifest fields."""
    module = SASRecState(net.eval().cpu()).eval()
    config = net.config
    batch = dynamic_dim("batch", MAX_BATCH)
    length = dynamic_dim("length", config.history_len)
    generator = torch.Generator().manual_seed(0)
    example = _example(2, min(3, config.history_len), config.n_items, generator)
    export_onnx(
        module,
        example,
        out / ONNX_FILE,
        dynamic_shapes=({0: batch, 1: length}, {0: batch}),
        input_names=list(INPUTS),
        output_names=module.output_names,
    )
    k = config.followers
    transition_outputs = (
        {
            TRANSITION_OUTPUTS[0]: ["batch", k, "int64"],
            TRANSITION_OUTPUTS[1]: ["batch", k, "float32"],
        }
        if k
        else {}
    )
    embeddings = net.all_item_vectors().detach().float().cpu().numpy()
    np.save(out / EMBEDDINGS_FILE, embeddings)
    return ExportedModel(
        model_kind=ModelKind.SASREC,
        onnx=OnnxGraph(
            file=ONNX_FILE,
            opset=OPSET,
            inputs={"items": ["batch", "length", "int64"], "lengths": ["batch", "int64"]},
            outputs={OUTPUT: ["batch", config.dim, "float32"]} | transition_outputs,
        ),
        item_embeddings=ArrayFile(file=EMBEDDINGS_FILE, shape=list(embeddings.shape)),
        dim=config.dim,
        n_items=config.n_items,
        history_len=config.history_len,
        followers=k or None,
        parity=parity(module, out / ONNX_FILE, config.n_items, config.history_len),
    )

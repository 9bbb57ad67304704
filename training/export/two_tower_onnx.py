"""Two-tower to ONNX: the user tower and the item tower, checked against torch.

    user_tower.onnx: history int64 [B, L] (right-padded item_idx, PAD 0), lengths int64 [B]
                     (0 = cold user), context int64 [B, C], user int64 [B, U]
                     -> user_vec float32 [B, d]
                     An input with no columns (C or U = 0) is left out of the graph; the
                     manifest's onnx.inputs lists exactly the inputs there are, in order.
    item_tower.onnx: item_idx int64 [N] (0..n_items) -> item_vec float32 [N, d]
    item_embeddings.npy: float32 [n_items + 1, d], the item tower over 0..n_items with row
                     PAD = 0; scores = user_vec @ item_embeddings.T (logits: / temperature)

Batch, length (1..history_len) and N are dynamic (torch.export.Dim); the example inputs have
them >= 2 (docs/architecture.md §7). The context/user columns and their codes are in features.json.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from recstack.artifact_manifest import (
    EMBEDDINGS_FILE,
    ArrayFile,
    ExportedModel,
    ModelKind,
    OnnxGraph,
)
from recstack.dataset_dir import PreparedDataset
from recstack.training.data.features import FeatureVocab
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
from recstack.training.export.two_tower_features import write_features
from recstack.training.models.two_tower import TwoTower

USER_FILE = "user_tower.onnx"
ITEM_FILE = "item_tower.onnx"
USER_OUTPUT, ITEM_INPUT, ITEM_OUTPUT = "user_vec", "item_idx", "item_vec"


class UserTower(nn.Module):
    """history [B, L], lengths [B], then context [B, C] and user [B, U] where C, U > 0
    -> user vectors [B, d]. Column j of a code matrix is the j-th field of net.sizes."""

    def __init__(self, net: TwoTower) -> None:
        super().__init__()
        self.net = net
        fields = {"context": list(net.sizes.context), "user": list(net.sizes.user)}
        self.fields = {kind: names for kind, names in fields.items() if names}

    @property
    def input_names(self) -> list[str]:
        return ["history", "lengths", *self.fields]

    def forward(self, history: torch.Tensor, lengths: torch.Tensor, *codes) -> torch.Tensor:
        given = {
            kind: {name: matrix[:, j] for j, name in enumerate(names)}  # name -> codes [B]
            for (kind, names), matrix in zip(self.fields.items(), codes, strict=True)
        }
        return self.net.user_vectors(history, lengths, given.get("context"), given.get("user"))


class ItemTower(nn.Module):
    """item_idx [N] -> item vectors [N, d]."""

    def __init__(self, net: TwoTower) -> None:
        super().__init__()
        self.net = net

    def forward(self, item_idx: torch.Tensor) -> torch.Tensor:
        return self.net.item_vectors(item_idx)


def _user_example(
    tower: UserTower, batch: int, length: int, generator: torch.Generator, cold: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random inputs: the last `cold` users have lengths 0; about 1 in 20 history ids and
    1 in 3 codes are out of range (the model reads them as 0)."""
    sizes = tower.net.sizes
    history = torch.randint(1, sizes.n_items + 1, (batch, length), generator=generator)
    junk = torch.rand(batch, length, generator=generator) < 0.05
    history[junk] = sizes.n_items + 1
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    lengths[batch - cold :] = 0
    history[torch.arange(length)[None, :] >= lengths[:, None]] = 0  # right padding
    codes = []
    for kind, names in tower.fields.items():
        size = torch.tensor([getattr(sizes, kind)[n] for n in names])  # [K]
        span = torch.rand(batch, len(names), generator=generator) * (size + 3) - 1
        codes.append(span.floor().long())  # [B, K] in -1..size + 1
    return history, lengths, *codes


def _user_parity(tower: UserTower, path: Path) -> list[dict]:
    """user_vec at several (batch, length) shapes, size 1 and cold users included."""
    onnx_session = session(path)
    generator = torch.Generator().manual_seed(0)
    history_len = tower.net.config.history_len
    shapes = [(b, n, b // 4) for b, n in parity_shapes(history_len)]
    shapes += [(1, 1, 1), (3, min(4, history_len), 3)]  # one cold user; a batch of cold users
    checks = []
    for batch, length, cold in shapes:
        inputs = _user_example(tower, batch, length, generator, cold)
        with torch.no_grad():
            expected = tower(*inputs).numpy()
        feeds = {name: x.numpy() for name, x in zip(tower.input_names, inputs, strict=True)}
        got = onnx_session.run([USER_OUTPUT], feeds)[0]
        checks.append(compare(got, expected, tower="user", batch=batch, length=length, cold=cold))
    return checks


def _item_parity(tower: ItemTower, path: Path, embeddings: np.ndarray) -> list[dict]:
    """item_vec for one item, a random batch with repeats and PAD, and the whole catalogue."""
    onnx_session = session(path)
    n_items = tower.net.sizes.n_items
    generator = torch.Generator().manual_seed(1)
    checks = []
    for item_idx in (
        torch.tensor([n_items]),
        torch.randint(0, n_items + 1, (9,), generator=generator),
    ):
        with torch.no_grad():
            expected = tower(item_idx).numpy()
        got = onnx_session.run([ITEM_OUTPUT], {ITEM_INPUT: item_idx.numpy()})[0]
        checks.append(compare(got, expected, tower="item", n=len(item_idx)))
    everything = np.arange(1, n_items + 1, dtype=np.int64)  # real items: row PAD is zero
    got = onnx_session.run([ITEM_OUTPUT], {ITEM_INPUT: everything})[0]
    checks.append(compare(got, embeddings[1:], tower="item_embeddings", n=n_items))
    return checks


def _export_towers(user: UserTower, item: ItemTower, out: Path) -> None:
    config, sizes = user.net.config, user.net.sizes
    batch = dynamic_dim("batch", MAX_BATCH)
    length = dynamic_dim("length", config.history_len)
    example = _user_example(user, 2, min(3, config.history_len), torch.Generator().manual_seed(0))
    export_onnx(
        user,
        example,
        out / USER_FILE,
        dynamic_shapes=({0: batch, 1: length}, {0: batch}, tuple({0: batch} for _ in user.fields)),
        input_names=user.input_names,
        output_names=[USER_OUTPUT],
    )
    export_onnx(
        item,
        (torch.tensor([1, 0, sizes.n_items]),),
        out / ITEM_FILE,
        dynamic_shapes=({0: dynamic_dim("n")},),
        input_names=[ITEM_INPUT],
        output_names=[ITEM_OUTPUT],
    )


def export_two_tower(
    net: TwoTower, vocab: FeatureVocab, data: PreparedDataset, out: Path
) -> ExportedModel:
    """Write both towers, item_embeddings.npy, features.json and user_features.parquet into
    `out` (after checking them against torch and training's encoders); returns their manifest
    fields."""
    net = net.eval().cpu()
    config, sizes = net.config, net.sizes
    user, item = UserTower(net).eval(), ItemTower(net).eval()
    _export_towers(user, item, out)
    with torch.no_grad():
        embeddings = net.all_item_vectors().float().numpy()  # [n_items + 1, d]
    embeddings[0] = 0.0  # PAD is never an item
    np.save(out / EMBEDDINGS_FILE, embeddings)
    checks = _user_parity(user, out / USER_FILE) + _item_parity(item, out / ITEM_FILE, embeddings)
    widths = {"context": len(sizes.context), "user": len(sizes.user)}
    features, user_features = write_features(net, vocab, data, out)
    return ExportedModel(
        model_kind=ModelKind.TWO_TOWER,
        onnx=OnnxGraph(
            file=USER_FILE,
            opset=OPSET,
            inputs={
                "history": ["batch", "length", "int64"],
                "lengths": ["batch", "int64"],
                **{kind: ["batch", widths[kind], "int64"] for kind in user.fields},
            },
            outputs={USER_OUTPUT: ["batch", config.dim, "float32"]},
            columns=user.fields,  # names of the context / user columns, in order
        ),
        item_tower=OnnxGraph(
            file=ITEM_FILE,
            opset=OPSET,
            inputs={ITEM_INPUT: ["n", "int64"]},
            outputs={ITEM_OUTPUT: ["n", config.dim, "float32"]},
        ),
        item_embeddings=ArrayFile(file=EMBEDDINGS_FILE, shape=list(embeddings.shape)),
        features=features,
        user_features=user_features,
        dim=config.dim,
        n_items=sizes.n_items,
        history_len=config.history_len,
        similarity=config.similarity,
        temperature=config.temperature,
        parity=parity_report(checks),
    )

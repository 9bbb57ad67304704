"""Model inference timing: torch eager vs onnxruntime for SASRec and the two-tower user tower.

SASRec (`SASRecState`: items, lengths -> state) and the user tower (`UserTower`: history,
lengths, context, user -> user_vec) are built untrained from recstack's config classes at
ML-100K size (1,682 items, dim 64, SASRec 2 layers; the two-tower with the ML-100K context and
user fields, its history window raised to the longest length asked for) and exported with the
project's exporters (`export_sasrec`, the two-tower's `_export_towers`) into a temp dir;
weights do not change the timings. Each (batch, length) cell times torch eager (under
torch.inference_mode) and onnxruntime on the same inputs (full-length histories) and thread
count; the max |ORT - torch| of the cell's output is recorded. On cuda, torch runs on the GPU
and ORT with the CUDAExecutionProvider; both calls then include copying the inputs in and the
output back, as a server's would.
"""

import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from inference_timing import interleaved, log, settle_gc

from recstack.training.export.sasrec_onnx import ONNX_FILE as SASREC_FILE
from recstack.training.export.sasrec_onnx import SASRecState, export_sasrec
from recstack.training.export.two_tower_onnx import USER_FILE, ItemTower, UserTower, _export_towers
from recstack.training.models.sasrec import SASRec, SASRecConfig
from recstack.training.models.two_tower import FeatureSizes, TwoTower, TwoTowerConfig

N_ITEMS = 1682  # ML-100K's catalogue
CONTEXT = {"hour": 25, "weekday": 8}  # ML-100K's two-tower fields (sizes include code 0)
USER = {"gender": 3, "age": 8, "occupation": 22}
ITEM_TAGS, ITEM_CATS = 19, {"year": 12}


def build_models(lengths: list[int], workdir: Path) -> dict[str, dict]:
    """Untrained ML-100K-size SASRec and two-tower, exported to ONNX by recstack's exporters.

    -> {name: {"module", "config", "onnx" (path), "inputs" (names), "export_parity"}}
    """
    longest = max(lengths)
    sasrec = SASRec(SASRecConfig(n_items=N_ITEMS, history_len=max(200, longest))).eval()
    (workdir / "sasrec").mkdir()
    manifest = export_sasrec(sasrec, workdir / "sasrec")  # also checks parity, raises if off
    sizes = FeatureSizes(N_ITEMS, dict(CONTEXT), dict(USER), ITEM_TAGS, dict(ITEM_CATS))
    two_tower = TwoTower(TwoTowerConfig(history_len=max(50, longest)), sizes).eval()
    user, item = UserTower(two_tower).eval(), ItemTower(two_tower).eval()
    (workdir / "two_tower").mkdir()
    # export_two_tower also writes features.json from a prepared dataset; its tower export is:
    _export_towers(user, item, workdir / "two_tower")
    return {
        "sasrec": {
            "module": SASRecState(sasrec).eval(),
            "config": asdict(sasrec.config),
            "onnx": workdir / "sasrec" / SASREC_FILE,
            "inputs": ["items", "lengths"],
            "export_parity": manifest.parity.max_abs_diff,
        },
        "two_tower_user": {
            "module": user,
            "config": asdict(two_tower.config) | asdict(sizes),
            "onnx": workdir / "two_tower" / USER_FILE,
            "inputs": user.input_names,  # history, lengths, context, user
            "export_parity": None,
        },
    }


def model_inputs(name: str, batch: int, length: int, rng: np.random.Generator) -> list:
    """Full-length histories (the most work per call) and in-range feature codes, int64."""
    items = rng.integers(1, N_ITEMS + 1, (batch, length))  # [B, L]
    lengths = np.full(batch, length, dtype=np.int64)  # [B]
    if name == "sasrec":
        return [items, lengths]
    context = np.stack([rng.integers(0, n, batch) for n in CONTEXT.values()], axis=1)  # [B, C]
    user = np.stack([rng.integers(0, n, batch) for n in USER.values()], axis=1)  # [B, U]
    return [items, lengths, context, user]


def ort_session(model: Path | bytes, threads: int, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=[provider])


def bench_cell(model: dict, session, arrays: list, device: str, repeats: int) -> list[dict]:
    """torch (and, given a session, onnxruntime) on one input batch -> their timing rows."""
    module, warmup = model["module"], min(5, repeats)

    def torch_call(_: int) -> np.ndarray:
        inputs = [torch.from_numpy(x).to(device) for x in arrays]
        return module(*inputs).cpu().numpy()

    calls = {"torch": torch_call}
    if session is not None:
        feeds = dict(zip(model["inputs"], arrays, strict=True))
        calls["onnxruntime"] = lambda _: session.run(None, feeds)
    with torch.inference_mode():  # ORT calls too: no harm, and the blocks alternate
        timing = interleaved(calls, repeats, warmup)
        expected = torch_call(0)
    torch_row = {"engine": "torch", "device": device} | timing["torch"]
    if session is None:
        return [torch_row]
    row = {"engine": "onnxruntime", "device": device, "provider": session.get_providers()[0]}
    row |= timing["onnxruntime"]
    row["p50_ratio_to_torch"] = row["p50_ms"] / torch_row["p50_ms"]
    row["max_abs_diff"] = float(np.abs(session.run(None, feeds)[0] - expected).max())
    row["export_parity"] = model["export_parity"]
    return [torch_row, row]


def bench_models(
    args, device: str, ort_provider: str | None, workdir: Path
) -> tuple[list[dict], dict]:
    """One torch row and one onnxruntime row per model x batch x length; the model configs."""
    log.print("models: exporting SASRec and the two-tower user tower ...")
    started = time.perf_counter()
    with warnings.catch_warnings():  # the exporter's deprecation chatter
        warnings.simplefilter("ignore")
        models = build_models(args.lengths, workdir)
    log.print(f"models: exported in {time.perf_counter() - started:.1f} s")
    settle_gc()
    rng = np.random.default_rng(0)
    rows = []
    for name, model in models.items():
        model["module"].to(device)
        session = ort_session(model["onnx"], args.threads, ort_provider) if ort_provider else None
        if session is not None and session.get_providers()[0] != ort_provider:
            log.print(f"note: onnxruntime could not use {ort_provider}; {name} ORT rows skipped")
            session = None
        for length in args.lengths:
            for batch in args.batches:
                arrays = model_inputs(name, batch, length, rng)
                cell = {"model": name, "batch": batch, "length": length}
                done = [cell | r for r in bench_cell(model, session, arrays, device, args.repeats)]
                rows += done
                log.print(
                    f"  {name} b={batch} L={length}: "
                    + ", ".join(
                        f"{r['engine']} {r['p50_ms']:.3f} ms (other load {r['other_load_cores'] or 0:.2f})"
                        for r in done
                    )
                    + (f", |diff| {done[-1]['max_abs_diff']:.1e}" if session else "")
                )
        model["module"].cpu()
    return rows, {name: model["config"] for name, model in models.items()}

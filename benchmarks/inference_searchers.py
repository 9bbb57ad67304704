"""The top-k searches the retrieval benchmark compares, each built when reached.

Exact: exact-numpy (serving's path: matmul + `recstack.item_index.top_n`), exact-ort (an ONNX
MatMul + TopK graph built with `onnx.helper`, the items as an initializer), exact-torch (matmul
+ topk on the device). FAISS: faiss-flat (IndexFlatIP), faiss-ivf (IndexIVFFlat, nlist = the
power of two nearest sqrt(items), trained on 64 * nlist sampled vectors; nprobe swept) and
faiss-hnsw (IndexHNSWFlat, M = 32 as serving once used, efConstruction = 40; efSearch swept,
FAISS uses max(efSearch, k)). Each comes with its build time and size (`index_mib`: FAISS's
serialised bytes, the ONNX graph's, the matrix's) and the process RSS growth during the build
(`rss_delta_mib`; freed memory of an earlier index may be reused, so it can read low).
"""

import math
import time
from collections.abc import Callable

import faiss
import numpy as np
import onnx
import torch
from inference_models import ort_session
from inference_timing import log
from machine_probes import rss_mib
from onnx import TensorProto, helper, numpy_helper

from recstack.item_index import top_n
from recstack.training.export.onnx_common import OPSET

HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 40
IVF_NPROBE = (1, 4, 8, 10, 12, 16, 32, 64)
HNSW_EF_SEARCH = (100, 128, 256, 512)
EXACT = ("exact-numpy", "exact-ort", "exact-torch", "faiss-flat")


def topk_onnx(items: np.ndarray, k: int) -> bytes:
    """ONNX graph: query float32 [B, d] -> scores [B, k], item int64 [B, k] (best first) =
    TopK(MatMul(query, items^T)); the item matrix is an initializer [d, n]."""
    d = items.shape[1]
    nodes = [
        helper.make_node("MatMul", ["query", "items_t"], ["all_scores"]),  # [B, n]
        helper.make_node("TopK", ["all_scores", "k"], ["scores", "item"], axis=-1, largest=1),
    ]
    graph = helper.make_graph(
        nodes,
        "exact_topk",
        [helper.make_tensor_value_info("query", TensorProto.FLOAT, ["batch", d])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("item", TensorProto.INT64, ["batch", k]),
        ],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(items.T), "items_t"),
            numpy_helper.from_array(np.array([k], dtype=np.int64), "k"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10  # onnxruntime reads IR 10 (onnx's newest may be ahead of it)
    onnx.checker.check_model(model)
    return model.SerializeToString()


Search = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # [b, d] -> scores, ids [b, k]


def exact_searchers(items: np.ndarray, k: int, threads: int, device: str, ort_cuda: bool):
    """Yield (method, device, setting, search, build info) for the exact methods, exact-numpy
    first (the reference); each is built when reached and dropped after."""

    def numpy_search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = top_n(q @ items.T, k)  # serving's exact path
        return scores, ids

    matrix = {"build_s": 0.0, "index_mib": items.nbytes / 2**20}
    yield "exact-numpy", "cpu", {}, numpy_search, matrix
    for provider in ["CPUExecutionProvider"] + (["CUDAExecutionProvider"] if ort_cuda else []):
        before, started = rss_mib(), time.perf_counter()
        graph = topk_onnx(items, k)
        session = ort_session(graph, threads, provider)
        if session.get_providers()[0] != provider:  # e.g. the CUDA libraries failed to load
            log.print(f"note: onnxruntime could not use {provider}; exact-ort there skipped")
            continue
        info = {"build_s": time.perf_counter() - started, "index_mib": len(graph) / 2**20}
        info["rss_delta_mib"] = rss_mib() - before
        del graph

        def ort_search(q: np.ndarray, session=session) -> tuple[np.ndarray, np.ndarray]:
            scores, ids = session.run(None, {"query": q})
            return scores, ids

        yield "exact-ort", "cuda" if "CUDA" in provider else "cpu", {}, ort_search, info
    on_device = torch.from_numpy(items).to(device)  # [n, d]

    @torch.inference_mode()
    def torch_search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = torch.topk(torch.from_numpy(q).to(device) @ on_device.T, k)
        return scores.cpu().numpy(), ids.cpu().numpy()

    yield "exact-torch", device, {}, torch_search, dict(matrix)


def build_faiss(kind: str, items: np.ndarray, seed: int = 0):
    """-> (index, build info). flat: IndexFlatIP; ivf: IndexIVFFlat over an IndexFlatIP
    quantizer, trained on a sample; hnsw: IndexHNSWFlat (inner product)."""
    n, d = items.shape
    params: dict = {}
    before, started = rss_mib(), time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = 2 ** round(math.log2(math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False)
        index.train(items[np.sort(sample)])
        params = {"nlist": nlist, "train_vectors": len(sample)}
    else:
        index = faiss.IndexHNSWFlat(d, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_NEIGHBOURS, "efConstruction": HNSW_EF_CONSTRUCTION}
    index.add(items)
    info = {"build_s": time.perf_counter() - started, "rss_delta_mib": rss_mib() - before}
    info |= {"index_mib": faiss.serialize_index(index).nbytes / 2**20, "params": params}
    return index, info


def faiss_searchers(items: np.ndarray, k: int):
    """Yield (method, "cpu", setting, search, build info): flat, then IVF per nprobe and HNSW
    per efSearch; one index is held at a time."""
    settings = {"flat": [{}], "ivf": [{"nprobe": p} for p in IVF_NPROBE]}
    settings["hnsw"] = [{"efSearch": ef} for ef in HNSW_EF_SEARCH]
    for kind, kind_settings in settings.items():
        log.print(f"  building faiss-{kind} over {len(items):,} items ...")
        index, info = build_faiss(kind, items)
        log.print(f"  faiss-{kind}: {info['build_s']:.1f} s")
        for setting in kind_settings:
            if "nprobe" in setting:
                index.nprobe = setting["nprobe"]
            if "efSearch" in setting:
                index.hnsw.efSearch = setting["efSearch"]
            yield f"faiss-{kind}", "cpu", setting, lambda q, index=index: index.search(q, k), info
        del index

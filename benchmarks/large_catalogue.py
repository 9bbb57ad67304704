"""A 1M-item catalogue end to end on CPU: data -> brief training -> export with the ANN index
-> what a serving replica pays to load it and to search it.

    .venv/bin/python benchmarks/large_catalogue.py              # 1M items, ~25 min on 2 cores
    .venv/bin/python benchmarks/large_catalogue.py --items 20000 --events 800000 --users 400 \\
        --train-batches 20 --ann on --workdir /tmp/lc-small --out /tmp/lc-small.json

Stages (each its own process, timed whole with its peak RSS):
1. `recstack data synth` + `recstack data prepare --source synth:`. Prepare's item vocab holds
   only items that have events (catalogue items without one are dropped and counted as
   `catalogue_items_without_events`), so the log must touch every item: Zipf 0.5 popularity
   and 36M events do at 1M items (the rarest item expects ~9 events); the run stops if the
   vocab is not exactly --items. Few users (2,000) keep the runs' own full-ranking test
   evaluation over 1M items affordable.
2. `recstack train` of the two-tower retriever and the SASRec ranker with the sampled softmax
   (mixed negatives, logQ: a full softmax over 1M items is out of reach on a CPU) for
   --train-batches batches each, without per-epoch validation; the train time includes the
   run's test evaluation (full ranking over the catalogue).
3. `recstack export` of both last checkpoints (`--ann auto` builds the ANN index above 100k
   items): nlist, nprobe and recall@100 come from the artifact's manifest.
4. A serve config (`serve.yaml`, the colocated pipeline of configs/serve_ml100k.yaml) with
   this run's artifacts, and the store and event log under --workdir.
5. A fresh process without torch, as one serving replica (1 FAISS and 1 onnxruntime thread):
   loads both artifacts (the index load is the read plus the recall re-check), then exact vs
   ANN at batch 1 on real requests (dataset users, history = every event but the last, which
   is excluded from the results): the search alone, retrieve 100 + rank 10, similar items;
   recall@100 of the ANN retrieval against exact with those exclusions; its peak RSS.

Writes benchmarks/results/large_catalogue.json (or --out); data, runs, artifacts, logs and
serve.yaml go under --workdir (default runs/large-catalogue).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TEMPLATE = ROOT / "configs" / "serve_ml100k.yaml"  # the colocated pipeline
KINDS = ("two_tower", "sasrec")  # retriever, ranker
SERVING_FILE = "serving.json"  # what the replica process measured
# the replica process: one core for FAISS (OpenMP), numpy's BLAS and onnxruntime (its default)
ONE_CORE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_measured(cmd: list[str], log: Path, env: dict | None = None, check: bool = True) -> dict:
    """Run a command (output to `log`); wall seconds and the child's peak RSS in MiB. A failure
    exits, or with check=False comes back as {"failed": its last output line}."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}
        )
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        last = (log.read_text().strip().splitlines() or ["(no output)"])[-1]
        if check:
            sys.exit(f"{' '.join(cmd[2:5])} failed: {last} (full output: {log})")
        return {"failed": last}
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def recstack(*args) -> list[str]:
    return [sys.executable, "-m", "recstack.cli", *map(str, args)]


def dir_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def train_config(kind: str, batches: int, data: Path, runs: Path) -> dict:
    """A brief CPU run: sampled softmax, `batches` batches, no per-epoch validation (so no
    best.ckpt: export reads last.ckpt)."""
    loss = {"kind": "sampled", "negatives": "mixed", "n_negatives": 4096, "logq": True}
    if kind == "two_tower":
        task, batch_size = "retrieval.RetrievalTask", 1024
        model = {"dim": 64, "history_len": 50, "pooling": "attention", "n_heads": 2}
        model |= {"dropout": 0.1, "similarity": "cosine", "temperature": 0.05}
    else:
        task, batch_size = "next_item.NextItemTask", 128
        model = {"history_len": 50, "dim": 64, "n_layers": 2, "n_heads": 2, "dropout": 0.2}
    return {
        "seed_everything": 0,
        "run_dir": str(runs / kind),
        "baselines": False,  # EASE over 1M items is an items x items matrix
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": batches,
            "limit_val_batches": 0,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 10,
            "enable_progress_bar": False,
        },
        "model": {
            "class_path": f"recstack.training.tasks.{task}",
            "init_args": {"model": model, "loss": loss, "optim": {"lr": 0.001}},
        },
        "data": {
            "dataset": str(data),
            "split": "loo",
            "batch_size": batch_size,
            "cache_dir": str(runs / "arrays"),
        },
        "early_stopping": {"strict": False},  # nothing to monitor without validation
    }


def serve_config(artifacts: dict[str, Path], workdir: Path, data: Path) -> dict:
    """configs/serve_ml100k.yaml with this run's artifacts, data, store and event log."""
    config = yaml.safe_load(TEMPLATE.read_text())
    app = config["applications"][0]
    app["args"]["store"] = {"kind": "embedded", "path": str(workdir / "state.sqlite")}
    app["args"]["event_log"] = str(workdir / "events")
    app["args"]["seed_histories_from"] = str(data)
    app["args"]["experiment"]["salt"] = "large-catalogue"
    user_config = app["deployments"][0]["user_config"]
    user_config["retriever"] |= {"models": {"main": str(artifacts["two_tower"])}, "index": "auto"}
    user_config["ranker"] |= {"models": {"main": str(artifacts["sasrec"])}}
    return config


# --------------------------------------------------------------------- the replica's side


def latency(fn, inputs: list) -> tuple[dict, list]:
    """fn on each input in turn, after one warm-up call: p50/p99 ms and the results."""
    fn(inputs[0])
    seconds, out = [], []
    for x in inputs:
        started = time.perf_counter()
        out.append(fn(x))
        seconds.append(time.perf_counter() - started)
    ms = np.array(seconds) * 1000
    return {
        "p50_ms": round(float(np.median(ms)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }, out


def real_requests(data: Path, n: int, seed: int) -> list:
    """Batch-1 requests of users drawn uniformly: history = every event but the last (at most
    the serve config's history_limit, as item ids), context = the last event's time, device."""
    import polars as pl

    from recstack.serving.retrieval import RetrievalRequest

    users = pl.read_parquet(data / "users.parquet", columns=["user_idx", "user_id"])
    items = pl.read_parquet(data / "items.parquet", columns=["item_idx", "item_id"])
    ids = np.array(["", *items.sort("item_idx")["item_id"].cast(pl.String)], dtype=object)
    chosen = np.random.default_rng(seed).choice(users.height, min(n, users.height), replace=False)
    rows = (
        pl.scan_parquet(data / "interactions.parquet")
        .filter(pl.col("user_idx").is_in(pl.Series(np.sort(chosen)).implode()))
        .select("user_idx", "item_idx", "ts", pl.col("device").cast(pl.String))
        .collect()
        .group_by("user_idx", maintain_order=True)
        .agg(pl.col("item_idx").slice(0, pl.len() - 1).tail(200), pl.col("ts", "device").last())
        .join(users.select("user_idx", pl.col("user_id").cast(pl.String)), on="user_idx")
    )
    return [
        RetrievalRequest(
            history=ids[row["item_idx"]].tolist(),
            context={"ts": row["ts"], "device": row["device"]},
            user_id=row["user_id"],
            exclude=[],
            n=100,
        )
        for row in rows.iter_rows(named=True)
    ]


def measure_serving(workdir: Path, n_requests: int) -> dict:
    """One colocated replica: load both artifacts, then exact vs ANN at batch 1."""
    import faiss
    import psutil

    from recstack.artifact import load_artifact
    from recstack.item_index import ItemIndex, recall
    from recstack.query import encode
    from recstack.serving.ranking import Ranker, RankRequest
    from recstack.serving.retrieval import Retriever

    paths = {kind: workdir / "artifacts" / kind / "v1" for kind in KINDS}
    clock, loads = time.perf_counter(), {}
    retriever_artifact = load_artifact(paths["two_tower"])  # hashes, ONNX, embeddings, vocab
    loads["retriever_artifact_s"] = round(time.perf_counter() - clock, 2)
    clock = time.perf_counter()
    retriever = Retriever(retriever_artifact, "auto")  # the index: read + recall re-check
    loads["retriever_index_s"] = round(time.perf_counter() - clock, 2)
    clock = time.perf_counter()
    ranker_artifact = load_artifact(paths["sasrec"])
    loads["ranker_artifact_s"] = round(time.perf_counter() - clock, 2)
    clock = time.perf_counter()
    ranker = Ranker(ranker_artifact)  # unit vectors + its similar-items index, if any
    loads["ranker_init_s"] = round(time.perf_counter() - clock, 2)
    loads["rss_after_loads_mib"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    ann = retriever.index.ann
    if ann is None:
        sys.exit(f"{paths['two_tower']} has no ANN index: export it with --ann on")
    clock = time.perf_counter()
    faiss.read_index(str(paths["two_tower"] / ann.spec["file"]))
    loads["retriever_index_read_ms"] = round((time.perf_counter() - clock) * 1000, 1)
    loads["retriever_recall_at_load"] = round(ann.recall, 4)
    if ranker.similar_index.ann is not None:
        loads["ranker_recall_at_load"] = round(ranker.similar_index.ann.recall, 4)

    requests = real_requests(workdir / "data", n_requests, seed=1)
    catalog = retriever_artifact.catalog
    histories = [catalog.to_idx(r.history)[0] for r in requests]
    queries = encode(
        retriever_artifact,
        histories,
        [r.context for r in requests],
        [r.user_id for r in requests],
    )
    rows = list(range(len(requests)))
    exact = ItemIndex(retriever_artifact.item_embeddings)
    search = {}
    for name, index in (("exact", exact), ("ann", retriever.index)):
        search[name], found = latency(
            lambda i, index=index: index.search(queries[i : i + 1], 100, [set(histories[i])])[0],
            rows,
        )
        search[f"{name}_ids"] = np.vstack(found)
    search["recall_at_100_with_history_excluded"] = round(
        recall(search.pop("ann_ids"), search.pop("exact_ids")), 4
    )
    search["speedup_p50"] = round(search["exact"]["p50_ms"] / search["ann"]["p50_ms"], 1)

    pipeline = {}
    for name, model in (("exact", Retriever(retriever_artifact, "exact")), ("ann", retriever)):

        def recommend(request, model=model):
            candidates = model.retrieve([request])[0].item_ids
            return ranker.rank([RankRequest(request.history, candidates, 10)])[0].item_ids

        pipeline[name], _ = latency(recommend, requests)

    similar = {"index": ranker.similar_index.method}
    items = [h[-1] for h in histories if h]
    unit = ranker.unit
    for name, index in (("exact", ItemIndex(unit)), ("ann", ranker.similar_index)):
        if index.method == name:
            similar[name], _ = latency(
                lambda i, index=index: index.search(unit[i][None, :], 10, [{i}]), items
            )
    return {
        "threads": {"faiss": 1, "onnxruntime": 1, "numpy_blas": 1},
        "requests": len(requests),
        "loads": loads,
        "search_top100_batch1": search,
        "retrieve100_rank10_batch1": pipeline,
        "similar_top10_batch1": similar,
    }


# ------------------------------------------------------------------------------ the chain


def serving_stage(workdir: Path, args) -> tuple[dict, dict]:
    """Stage 5 in a fresh process on one core: (its wall time and peak RSS, what it measured)."""
    stage = run_measured(
        [sys.executable, __file__, "--serving", "--workdir", str(workdir),
         "--requests", str(args.requests)],
        workdir / "logs" / "serving.log",
        env=ONE_CORE,
    )  # fmt: skip
    serving = json.loads((workdir / SERVING_FILE).read_text())
    serving["peak_rss_mib"] = stage["peak_rss_mib"]
    return stage, serving


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=36_000_000)
    parser.add_argument("--zipf-a", type=float, default=0.5)
    parser.add_argument("--train-batches", type=int, default=200)
    parser.add_argument("--ann", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--ann-nlist", type=int, default=None, help="default: export's")
    parser.add_argument("--requests", type=int, default=200, help="batch-1 requests timed")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "large-catalogue")
    parser.add_argument("--out", type=Path, default=RESULTS / "large_catalogue.json")
    parser.add_argument(
        "--remeasure-serving",
        action="store_true",
        help="rerun only stage 5 on the artifacts already in --workdir (after a serving change) "
        "and replace its figures in --out",
    )
    parser.add_argument("--serving", action="store_true", help=argparse.SUPPRESS)  # stage 5
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    if args.serving:
        result = measure_serving(workdir, args.requests)
        (workdir / SERVING_FILE).write_text(json.dumps(result, indent=2) + "\n")
        return None
    if args.remeasure_serving:
        result = json.loads(args.out.read_text())
        result["stages"]["serving_replica"], result["serving"] = serving_stage(workdir, args)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["serving"], indent=2))
        return result

    sys.path.insert(0, str(Path(__file__).parent))  # this folder's modules, however it is run
    from machine_info import machine

    started = time.perf_counter()
    logs, raw, data, runs = (workdir / d for d in ("logs", "raw", "data", "runs"))
    logs.mkdir(parents=True, exist_ok=True)
    stages = {}
    stages["synth"] = run_measured(
        recstack("data", "synth", "--users", args.users, "--items", args.items, "--events",
                 args.events, "--zipf_a", args.zipf_a, "--out", raw, "--overwrite", "true",
                 "--progress", "false"),
        logs / "synth.log",
    )  # fmt: skip
    stages["prepare"] = run_measured(
        recstack("data", "prepare", "--source", f"synth:{raw}", "--out", data, "--overwrite",
                 "true", "--quiet", "true"),
        logs / "prepare.log",
    )  # fmt: skip
    counts = json.loads((data / "manifest.json").read_text())["counts"]
    quality = json.loads((data / "quality_report.json").read_text())
    if counts["items"] != args.items:
        sys.exit(
            f"the prepared vocab holds {counts['items']:,} of {args.items:,} items: prepare "
            f"keeps only items with events ({quality['catalogue_items_without_events']:,} "
            "have none); raise --events or lower --zipf-a"
        )

    artifacts, training, refused = {}, {}, {}
    for kind in KINDS:
        config = workdir / f"train_{kind}.yaml"
        config.write_text(yaml.safe_dump(train_config(kind, args.train_batches, data, runs)))
        stages[f"train_{kind}"] = run_measured(
            recstack("train", "--config", config), logs / f"train_{kind}.log"
        )
        metrics = json.loads((runs / kind / "metrics.json").read_text())
        training[kind] = {
            "batches": args.train_batches,
            "fit_s": metrics["fit_seconds"],
            "test_eval_s": metrics["test_info"]["eval_s"],
            "test": {k: metrics["test"][k] for k in ("ndcg@10", "hr@10")},
        }
        artifacts[kind] = workdir / "artifacts" / kind / "v1"
        export = recstack(
            "export", "--ckpt", runs / kind / "checkpoints" / "last.ckpt", "--out",
            artifacts[kind], "--overwrite", "true",
            *(("--ann_nlist", args.ann_nlist) if args.ann_nlist else ()),
        )  # fmt: skip
        log = logs / f"export_{kind}.log"
        stages[f"export_{kind}"] = run_measured(
            [*export, "--ann", args.ann], log, check=kind != "sasrec"
        )
        if "failed" in stages[f"export_{kind}"]:
            # SASRec's index serves similar items only: on barely trained item vectors it may
            # miss the recall target; record the refusal and serve similar items exactly
            refused[kind] = stages.pop(f"export_{kind}")["failed"]
            stages[f"export_{kind}"] = run_measured([*export, "--ann", "off"], log)

    serve_yaml = workdir / "serve.yaml"
    header = "# recstack serve --config " + str(serve_yaml) + "  (benchmarks/large_catalogue.py)\n"
    serve_yaml.write_text(header + yaml.safe_dump(serve_config(artifacts, workdir, data)))
    stages["serving_replica"], serving = serving_stage(workdir, args)

    result = {
        "benchmark": "large_catalogue",
        "machine": machine(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": {
            **counts,
            "items_never_used_by_synth": json.loads((raw / "synth.json").read_text())["stats"][
                "items_never_used"
            ],
            "catalogue_items_without_events": quality["catalogue_items_without_events"],
            "raw_mib": dir_mib(raw),
            "prepared_mib": dir_mib(data),
        },
        "stages": stages,
        "training": training,
        "artifacts": {
            kind: {
                "dir": str(path),
                "mib": dir_mib(path),
                "ann": json.loads((path / "manifest.json").read_text()).get("ann"),
                **({"ann_refused": refused[kind]} if kind in refused else {}),
            }
            for kind, path in artifacts.items()
        },
        "serving": serving,
        "serve_config": str(serve_yaml),
        "total_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

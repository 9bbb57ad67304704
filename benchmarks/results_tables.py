"""Write the results tables of benchmarks/README.md (and the serving table of the main README)
from the JSON in benchmarks/results/.

    .venv/bin/python benchmarks/results_tables.py          # rewrite the README's tables
    .venv/bin/python benchmarks/results_tables.py --check  # exit 1 if the README is stale

Every figure in the README's results section comes from here, so a table never disagrees
with the JSON it summarises. Each table says which file it reads; a missing file is a note.
"""

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from fault_scenarios import FAULTS

HERE = Path(__file__).parent
RESULTS = HERE / "results"
README = HERE / "README.md"
MAIN_README = HERE.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
ENGINES_START, ENGINES_END = "<!-- engines:start -->", "<!-- engines:end -->"
ANCHORS_START, ANCHORS_END = "<!-- anchors:start -->", "<!-- anchors:end -->"
AMAZON_START, AMAZON_END = "<!-- amazon:start -->", "<!-- amazon:end -->"
AMAZON = ("beauty", "sports")


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += [
        "| " + " | ".join("–" if cell is None else str(cell) for cell in row) + " |" for row in rows
    ]
    return "\n".join(lines)


def ms(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:.2f}" if value < 1 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def num(value: float | None, digits: int = 0) -> str | None:
    return None if value is None else f"{value:,.{digits}f}"


def load(name: str) -> dict | None:
    try:
        return json.loads((RESULTS / name).read_text())
    except (OSError, ValueError):
        return None


def prepare_table() -> str:
    d = load("prepare_bench.json")
    counts = d["counts"]
    rows = [
        ["`recstack data synth`", d["synth"]["seconds"], d["synth"]["peak_rss_mib"]],
        [
            "`recstack data prepare` (Parquet)",
            d["prepare"]["seconds"],
            d["prepare"]["peak_rss_mib"],
        ],
        [
            f"`recstack data prepare` (CSV, {d['prepare_from_csv']['csv_mib']:.0f} MiB)",
            d["prepare_from_csv"]["seconds"],
            d["prepare_from_csv"]["peak_rss_mib"],
        ],
    ]
    title = (
        f"`prepare_bench.json`: {counts['interactions']:,} events, {counts['users']:,} users, "
        f"{counts['items']:,} items; meets targets: {d['meets_targets']}"
    )
    return title + "\n\n" + md_table(["step", "wall s", "peak RSS MiB"], rows)


def train_table(name: str) -> str:
    d = load(name)
    rows = []
    for run in d["runs"]:
        epoch = run.get("epoch_s", run.get("epoch_s_estimated"))
        val = run.get("val_s", run.get("val_s_estimated"))
        rows.append(
            [
                run["size"],
                run["model"],
                ("~" if "epoch_s" not in run else "") + num(epoch, 2),
                num(run["samples_per_s"]),
                f"{run['data_wait_share']:.0%}",
                ("~" if "val_s" not in run else "") + num(val, 2),
                num(run.get("peak_rss_mib")),
                {True: "met", False: "missed", None: ""}[run.get("meets_target")],
            ]
        )
    title = (
        f"`{name}`: device {d['device']}, {d['precision']} (`~`: scaled up from part of an epoch)"
    )
    headers = [
        "size",
        "model",
        "s/epoch",
        "samples/s",
        "data wait",
        "validation s",
        "peak RSS MiB",
        "target",
    ]
    return title + "\n\n" + md_table(headers, rows)


def quality_table() -> str:
    d = load("train_quality_ml100k.json")
    rows = []
    for model, result in d["models"].items():
        mean, std = result["mean"], result["std"]
        rows.append(
            [model, len(result["runs"])]
            + [f"{mean[m]:.4f} ± {std[m]:.4f}" for m in ("ndcg@10", "hr@10", "mrr@10")]
        )
    baselines = load("baselines_ml100k_loo.json") or {"models": {}}
    for model, result in baselines["models"].items():
        rows.append(
            [f"{model} (baseline)", 1]
            + [f"{result['metrics'][m]:.4f}" for m in ("ndcg@10", "hr@10", "mrr@10")]
        )
    title = "`train_quality_ml100k.json`, `baselines_ml100k_loo.json`: ML-100K, leave-one-out test, full ranking"
    return title + "\n\n" + md_table(["model", "seeds", "NDCG@10", "HR@10", "MRR@10"], rows)


def _stalls(by_kind: dict | None, n: int = 3) -> str:
    """The kinds of server stall (>= 5 ms) that took the most time: kind count×, max ms."""
    if not by_kind:
        return "–"
    top = list(by_kind.items())[:n]
    return "; ".join(f"{k} {v['count']}×, max {v['max_ms']:.0f}" for k, v in top)


def engine_headlines() -> str:
    """The main README's serving table: the soaks of each engine_compare*.json."""
    rows = []
    for path in sorted(RESULTS.glob("engine_compare*.json")):
        d = json.loads(path.read_text())
        for engine, v in d["engines"].items():
            for rate, soak in v["soaks"].items():
                lat = soak["latency_ms"]
                rows.append(
                    [
                        f"`{path.name}`",
                        engine,
                        f"{rate}/s, {soak['seconds'] / 60:.0f} min",
                        ms(lat["p50"]),
                        ms(lat["p99"]),
                        ms(lat["max"]),
                        f"{soak['errors']}/{soak['sent']}",
                        num(soak["server_cpu_ms_per_request"], 2),
                        num(v["cpu_ratio_to_uvicorn"].get(rate), 2),
                        num(v.get("highest_sustained_rps"), 0),
                    ]
                )
    headers = ["run", "engine", "soak", "p50 ms", "p99 ms", "max ms", "errors"]
    headers += ["CPU ms/req", "× uvicorn", "highest rate at p99 ≤ 15 ms (step)"]
    return md_table(headers, rows) if rows else "_no `engine_compare*.json` yet_"


def _mean_std(summary: dict | None, runs: int, metric: str = "ndcg@10") -> str | None:
    """ "mean ± std" over `runs` seeds (the mean alone for one run)."""
    if not summary or not summary.get("mean"):
        return None
    std = (summary.get("std") or {}).get(metric)
    spread = f" ± {std:.4f}" if std is not None and runs > 1 else ""
    return f"{summary['mean'][metric]:.4f}{spread}"


def anchors_table() -> str:
    """The main README's Amazon table: published anchor, baselines, the shipped SASRec and
    two-tower recipes (trained on TRAIN only, and refitted on TRAIN + VALID) and SASRec tuned
    per dataset by `recstack tune` (its best trial), from amazon_<d>.json."""
    rows = []
    for name in AMAZON:
        path = RESULTS / f"amazon_{name}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        base = {
            k: (v.get("metrics") or {}).get("ndcg@10") for k, v in d["baselines"]["models"].items()
        }
        sasrec = d.get("summary", {}).get("sasrec") or {}
        target = d.get("targets", {}).get("models", {}).get("sasrec") or {}
        seeds = len(sasrec.get("complete_runs", []))
        two_tower = d.get("summary", {}).get("two_tower") or {}
        tt_seeds = len(two_tower.get("complete_runs", []))
        tuned = d.get("summary", {}).get("sasrec-tuned") or {}  # the recstack tune row
        tuned_seeds = len(tuned.get("complete_runs", []))
        trials = ((d.get("tune") or {}).get("sasrec") or {}).get("trials")
        rows.append(
            [
                name,
                num(d["anchor"]["ndcg@10"], 4),
                *(num(base.get(k), 4) for k in ("MostPop", "EASE", "Markov")),
                seeds,
                _mean_std(sasrec, seeds),
                _mean_std(sasrec.get("refit"), seeds),
                num(target.get("vs_anchor"), 2),
                num(target.get("refit_vs_best_baseline"), 2),
                tt_seeds,
                _mean_std(two_tower, tt_seeds),
                _mean_std(two_tower.get("refit"), tt_seeds),
                trials or "–",
                tuned_seeds or "–",
                _mean_std(tuned, tuned_seeds) or "–",
                _mean_std(tuned.get("refit"), tuned_seeds) or "–",
            ]
        )
    headers = ["dataset", "ICLRec (published)", "MostPop", "EASE", "Markov", "SASRec seeds"]
    headers += ["SASRec, TRAIN only", "SASRec refit", "TRAIN only / anchor"]
    headers += ["refit / best baseline", "two-tower seeds", "two-tower, TRAIN only"]
    headers += ["two-tower refit", "SASRec tune trials", "tuned seeds", "SASRec tuned, TRAIN only"]
    headers += ["SASRec tuned refit"]
    return md_table(headers, rows) if rows else "_no `amazon_*.json` yet_"


def amazon_tables() -> str:
    """benchmarks/README.md's Amazon section: amazon_quality.py's tables of each dataset."""
    from amazon_quality import markdown

    parts = []
    for name in AMAZON:
        path = RESULTS / f"amazon_{name}.json"
        if path.exists():
            parts.append(markdown(json.loads(path.read_text())))
    return "\n\n".join(parts) if parts else "_no `amazon_*.json` yet_"


def _p99_by_endpoint(soak: dict) -> str:
    """p99 ms per endpoint of a soak, from load_test.py's file beside the summary."""
    try:
        run = json.loads((HERE.parent / soak["file"]).read_text())
    except (KeyError, OSError, ValueError):
        return "–"
    endpoints = run["steps"][0]["endpoints"]
    return "; ".join(f"{e} {ms(v['latency_ms']['p99'])}" for e, v in endpoints.items())


def engine_table(name: str) -> str:
    d = load(name)
    if d is None:
        return f"_no `{name}` yet_"
    engines = d["engines"]
    floor = d["in_process"]["latency_ms"]
    floors = [["in-process (no HTTP)", ms(floor["p50"]), ms(floor["p99"])]]
    floors += [
        [e, ms(v["sequential"]["latency_ms"]["p50"]), ms(v["sequential"]["latency_ms"]["p99"])]
        for e, v in engines.items()
    ]
    rows = []
    for engine, v in engines.items():
        for rate, soak in v["soaks"].items():
            lat = soak["latency_ms"]
            rows.append(
                [
                    engine,
                    f"{rate}/s × {soak['seconds'] / 60:.0f} min",
                    *(ms(lat[p]) for p in ("p50", "p99", "p99.9", "max")),
                    ms(soak["worst_second_p99_ms"]),
                    _p99_by_endpoint(soak),
                    f"{soak['errors']}/{soak['sent']}",
                    num(soak["server_cores"], 2),
                    num(soak["server_cpu_ms_per_request"], 2),
                    num(v["cpu_ratio_to_uvicorn"].get(rate), 2),
                    _stalls(soak["stalls"]),
                ]
            )
    best = [[e, num(v.get("highest_sustained_rps"), 1)] for e, v in engines.items()]
    targets = "\n".join(
        f"- {'met' if met else '**missed**'}: {target}" for target, met in d["targets"].items()
    )
    machine = d["machine"]
    headers = ["engine", "soak", "p50", "p99", "p99.9", "max", "worst 1-s p99"]
    headers += ["p99 by endpoint", "errors"]
    headers += ["server cores", "CPU ms/req", "CPU × uvicorn", "largest stalls (ms)"]
    return "\n\n".join(
        [
            f"`{name}` ({machine['cores']} cores, {machine['cpu']}; client on the same cores; "
            f"`.venv/bin/python {d['command'].split('python ', 1)[-1]}`, "
            f"{d['minutes']:.0f} min). "
            "Realistic mix (80 % recommend, 15 % events, 5 % similar), latency in ms from the "
            f"scheduled send time; per-second p99 in `{Path(d['plot']).name}`.",
            md_table(["floor: recommend, one call at a time", "p50", "p99"], floors),
            md_table(headers, rows),
            md_table(["engine", "highest rate at p99 ≤ 15 ms, errors ≤ 0.1 % (step run)"], best),
            targets,
        ]
    )


def load_test_table() -> str:
    files = sorted(
        [*RESULTS.glob("load_test*.json"), *RESULTS.glob("engine_compare*_runs/*_step.json")]
    )
    if not files:
        return "_no `load_test*.json` or `engine_compare*_runs/*_step.json` yet_"
    parts = []
    for path in files:
        d = json.loads(path.read_text())
        if "steps" not in d:
            parts.append(f"`{path.name}`: {d.get('error', 'no steps')}")
            continue
        rows = []
        for step in d["steps"]:
            o, cpu = step["overall"], step["cpu"]
            lat = o["latency_ms"]
            rec = step["endpoints"].get("recommend", {}).get("latency_ms", {})
            rows.append(
                [
                    f"{step['offered_rps']:g}",
                    num(o["throughput_rps"]),
                    *(ms(lat[p]) for p in ("p50", "p90", "p99", "p99.9", "max")),
                    ms(rec.get("p99")),
                    f"{o['errors']}/{o['sent']}",
                    num(cpu.get("server_cores_used"), 2),
                    num(cpu.get("client_cores_used"), 2),
                    "yes" if step["sustained"] else "no",
                ]
            )
        label = d["config"].get("label") or ""
        best = d.get("highest_sustained_rps")
        target = d["target"]
        title = (
            f"`{path.relative_to(RESULTS)}` ({label}; {d['mode']} mode): highest rate sustained "
            f"at p99 ≤ "
            f"{target['p99_ms']:g} ms and errors ≤ {target['error_budget']:.1%}: "
            f"**{'none' if best is None else f'{best:g} req/s'}**"
        )
        headers = [
            "offered/s",
            "ok/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "recommend p99",
            "errors",
            "server cores",
            "client cores",
            "sustained",
        ]
        parts.append(title + "\n\n" + md_table(headers, rows))
    return "\n\n".join(parts)


def inference_tables(name: str = "inference_bench.json") -> str:
    d = load(name)
    models = {(r["model"], r["length"], r["batch"], r["engine"]): r for r in d["models"]}
    rows = []
    for model, length in sorted({(m, length) for m, length, _, _ in models}):
        row = [model, length]
        for batch in (1, 64):
            torch_ms = models[model, length, batch, "torch"]["p50_ms"]
            ort = models[model, length, batch, "onnxruntime"]
            row += [ms(torch_ms), ms(ort["p50_ms"]), f"{ort['p50_ratio_to_torch']:.2f}"]
        row.append(f"{ort['max_abs_diff']:.1e}")
        rows.append(row)
    targets = d["targets"]
    ort_target = targets["ort_latency_le_half_torch_at_batch_1"]
    headers = [
        "model",
        "length",
        "torch b1",
        "ORT b1",
        "ORT/torch b1",
        "torch b64",
        "ORT b64",
        "ORT/torch b64",
        "max abs diff",
    ]
    part1 = (
        f"`{name}`, models (p50 ms, {d['config']['threads']} threads, device "
        f"{d['config']['device']}): ORT ≤ 0.5 × torch at batch 1: "
        f"**{'met' if ort_target['met'] else 'missed'}**\n\n" + md_table(headers, rows)
    )
    by_key = {}
    for r in d["retrieval"]:
        key = (r["items"], r["method"], json.dumps(r["setting"]))
        by_key.setdefault(key, {})[r["batch"]] = r
    rows = []
    for (items, method, setting), batches in by_key.items():
        b1, b64 = batches.get(1, {}), batches.get(64, {})
        fraction = b1.get("bandwidth_fraction")
        rows.append(
            [
                f"{items:,}",
                method,
                ", ".join(f"{k} {v}" for k, v in json.loads(setting).items()) or "–",
                f"{b64.get('recall', b1.get('recall')):.3f}",
                ms(b1.get("p50_ms")),
                None if fraction is None else f"{fraction:.0%}",
                num(b64.get("qps")),
                None
                if "speedup_vs_best_exact_cpu" not in b64
                else f"{b64['speedup_vs_best_exact_cpu']:.1f}×",
            ]
        )
    exact, ann = (
        targets["exact_batched_ge_half_bandwidth"],
        targets["ann_recall_ge_0.95_at_10x_exact"],
    )
    best64 = exact["best"]
    bw = d["bandwidth"]["cpu"]
    headers = [
        "items",
        "method",
        "setting",
        "recall@100",
        "b1 p50 ms",
        "b1 share of bandwidth",
        "b64 queries/s",
        "b64 speed-up vs exact",
    ]
    part2 = (
        f"Retrieval, top-{d['config']['k']} of 64-d clustered vectors: measured read bandwidth "
        f"{bw['read_gbps']:.1f} GB/s, float32 GEMM {bw['gemm_gflops']:.0f} GFLOP/s. Exact search at "
        f"1M items, batch 64 ({best64['method']}): {best64['bandwidth_fraction']:.0%} of the "
        f"bandwidth bound, {best64['roofline_fraction']:.0%} of the roofline bound (compute-bound "
        f"at batch 64: {best64['compute_bound_ms']:.0f} ms of arithmetic vs "
        f"{best64['bandwidth_bound_ms']:.0f} ms of reading); ≥ 50 % of the bandwidth bound: "
        f"**{'met' if exact['met'] else 'missed'}**. ANN recall@100 ≥ 0.95 at ≥ 10× exact: "
        f"**{'met' if ann['met'] else 'missed'}** (best: {ann['best']['method']} "
        f"{ann['best']['setting']}, recall {ann['best']['recall']:.3f}, "
        f"{ann['best']['speedup_vs_best_exact_cpu']:.1f}×)\n\n" + md_table(headers, rows)
    )
    rows = [
        [
            f"{r['items']:,}",
            r["method"],
            ", ".join(f"{k} {v}" for k, v in r.get("params", {}).items()) or "–",
            num(r["build_s"], 1),
            num(r["index_mib"]),
        ]
        for r in d["indexes"]
    ]
    part3 = "Index build\n\n" + md_table(["items", "method", "parameters", "build s", "MiB"], rows)
    return "\n\n".join([part1, part2, part3])


def engine_tables() -> str:
    """Every engine_compare*.json run with soaks, the first run first (a second run reproduces
    it); a run without soaks (idle and HTTP-path CPU only) is described in the text."""
    names = sorted(
        p.name
        for p in RESULTS.glob("engine_compare*.json")
        if (d := load(p.name)) is None or any(e["soaks"] for e in d["engines"].values())
    )
    return "\n\n".join(engine_table(n) for n in names) or "_no `engine_compare*.json` yet_"


def stall_fixes_table() -> str:
    d = load("stall_fixes.json")
    if d is None:
        return "_no `stall_fixes.json` yet_"
    r = d["results"]
    rows = []
    for name, what in [
        ("event_log_seal", "event-log append (seal every 10 s)"),
        ("store_checkpoint", "SQLite store call, 2 processes"),
        ("gc_full_collection_ms", "full GC pause, 1M-item vocabulary"),
    ]:
        for side in ("before", "after"):
            v = r[name][side]
            rows.append([what, side, *(ms(v[p]) for p in ("p50", "p99", "p99.9", "max"))])
    auth = r["auth_dependency_cpu_us_per_request"]
    return "\n\n".join(
        [
            f"`stall_fixes.json` (before = `{d['before_commit']}`, after = `{d['after_commit']}`, "
            f"{d['seconds']:.0f} s per workload and side; ms).",
            md_table(["workload", "code", "p50", "p99", "p99.9", "max"], rows),
            "API-key check, CPU µs per request: "
            + ", ".join(f"{k} {v:.0f}" for k, v in auth.items()),
        ]
    )


def seal_cost_table() -> str:
    d = load("seal_cost.json")
    if d is None:
        return "_no `seal_cost.json` yet_"
    rows = [
        [side, ms(v["seal_ms"]["median"]), ms(v["seal_ms"]["max"]),
         ms(v["probe_overshoot_ms"]["median"]), ms(v["probe_overshoot_ms"]["max"])]
        for side, v in d["results"].items()
    ]  # fmt: skip
    return "\n\n".join(
        [
            f"`seal_cost.json`: sealing one {d['appends']:,}-append event-log segment "
            f"(before = `{d['before_commit']}`, after = `{d['after_commit']}`, "
            f"{d['repeats']} seals per side; ms). Overshoot: how late a thread sleeping 1 ms "
            "woke while the seal ran, i.e. how long the seal kept the event loop from the GIL.",
            md_table(
                ["code", "seal median", "seal max", "overshoot median", "overshoot max"], rows
            ),
        ]
    )


def _fault_note(r: dict) -> str:
    """What the fault itself did, in a few words."""
    f, name = r["fault"], r["scenario"]
    if f.get("error"):
        return f"fault failed: {f['error']}"
    if name == "worker_kill":
        return f"a new worker in {f['respawned_after_s']:.1f} s"
    if name == "replica_kill":
        back = f.get("restarted_after_s")
        return f"a new replica in {'–' if back is None else f'{back:.1f}'} s"
    if name == "redis_refused":
        return f"{f['keys_before']} keys before, {f['keys_after_restart']} after the restart"
    if name == "redis_emptied":
        return f"{f['keys_before']} keys flushed; recovery = personalised again"
    if name == "corrupt_artifact":
        uploads = f["uploads"].values()
        refused = sum(u["status"] == 400 for u in uploads)
        return f"{refused}/{len(uploads)} forged uploads answered 400; scores finite {f['probe_scores_finite']}"
    if name == "server_kill":
        e, survivors = r["events"], f.get("survivors") or []
        text = f"events acked {e['acked']:,}, **lost {e['lost']}**; "
        if survivors:
            names = Counter(p["name"] for p in survivors)
            text += (
                f"**{len(survivors)} process{'es' if len(survivors) > 1 else ''} still alive 5 s "
                "after the kill** "
                f"({', '.join(f'{n} ×{c}' for n, c in names.items())}; port held by "
                f"{f.get('port_held_by') or 'none'}), then killed; "
            )
        elif f.get("outside_the_group"):
            text += (
                f"{f['outside_the_group']} processes outside the killed group, all gone "
                f"{f['all_gone_s']:.1f} s later; "
            )
        return text + f"ready {f['restart_ready_s']:.1f} s after the restart began"
    return ""


def faults_table(name: str) -> str:
    d = load(name)
    if d is None:
        return f"_no `{name}` yet_"
    machine, config = d["machine"], d["config"]
    commands = list(dict.fromkeys(r["command"] for r in d.get("runs") or [])) or [d["command"]]
    commands = "; ".join(f"`.venv/bin/python {c.split('python ', 1)[-1]}`" for c in commands)
    rows = []
    order = {name: i for i, name in enumerate(FAULTS)}
    for r in sorted(d["scenarios"], key=lambda r: (order[r["scenario"]], r["engine"] != "uvicorn")):
        lat = r["latency_ms"]
        during, outside = lat.get("during", {}), lat.get("outside", {})
        fallbacks = ", ".join(f"{k} {v}" for k, v in sorted(r["fallbacks"].items()))
        recovery = r["recovery_s"]
        rows.append(
            [
                r["scenario"],
                r["engine"],
                f"{r['requests']:,}",
                r["errors"],
                r["client_4xx"],
                f"{r['fault_fallbacks']} ({fallbacks or 'none'})",
                f"{ms(during.get('p50'))} / {ms(during.get('p99'))} / {ms(during.get('max'))}",
                f"{ms(outside.get('p50'))} / {ms(outside.get('p99'))}",
                "not recovered" if recovery is None else f"{recovery:.2f}",
                _fault_note(r),
            ]
        )
    headers = ["scenario", "engine", "requests", "errors", "4xx", "fault's fallbacks (all)"]
    headers += ["during p50 / p99 / max", "outside p50 / p99", "recovery s", "the fault"]
    parts = [
        f"`{name}` ({machine['cores']} cores, {machine['cpu']}; client on the same cores; "
        f"{commands}; {d['minutes']:.0f} min). Realistic mix at {config['rate']:g} req/s, the "
        f"fault {config['fault_at']:g} s into a {config['duration']:g}-s window (Redis down or "
        f"frozen {config['fault_s']:g} s); latency in ms from the scheduled send time; "
        "per-second p99, errors and fallbacks in the JSON's `timeline`.",
        md_table(headers, rows),
    ]
    soaks = d.get("soak") or []
    if soaks:
        soak_rows = [
            [
                s["engine"],
                f"{s['rate']:g}/s × {s['seconds'] / 60:.0f} min",
                f"{s['requests']:,}",
                s["errors"],
                s["client_4xx"],
                *(ms(s["latency_ms"][p]) for p in ("p50", "p99", "p99.9", "max")),
                ms(s["worst_second_p99_ms"]),
            ]
            for s in soaks
        ]
        soak_headers = ["soak (no fault)", "rate", "requests", "errors", "4xx", "p50", "p99"]
        soak_headers += ["p99.9", "max", "worst 1-s p99"]
        parts.append(md_table(soak_headers, soak_rows))
    elif d.get("soak_reference"):
        ref = d["soak_reference"]
        parts.append(f"Soak not run here: the 5-minute soaks are `{Path(ref['file']).name}`'s.")
    failures = d.get("failures") or {}
    if failures:
        parts.append("Did not run: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    return "\n\n".join(parts)


def faults_tables() -> str:
    """Every faults*.json run, the first run first (a second run reproduces it)."""
    names = sorted(p.name for p in RESULTS.glob("faults*.json"))
    return "\n\n".join(faults_table(n) for n in names) or "_no `faults*.json` yet_"


def step_overhead_table() -> str:
    """step_overhead*.json: a `recstack train` step against a plain PyTorch step, same batches."""
    parts = []
    for path in sorted(RESULTS.glob("step_overhead*.json")):
        d = load(path.name)
        rows = [
            [run["model"], run["batch_size"], num(run["recstack"]["mean_ms"], 1),
             num(run["plain"]["mean_ms"], 1), f"{run['ratio_mean']:.3f}",
             f"{run['ratio_median']:.3f}", "met" if run["meets_target"] else "missed"]
            for run in d["runs"]
        ]  # fmt: skip
        title = f"`{path.name}` ({d['machine']['cores']} cores, {d['machine']['cpu']}, torch threads {d['torch_threads']})"
        if any("profile_tottime" in run for run in d["runs"]):
            title += "; under cProfile (`--profile true`), which slows the recstack side"
        headers = ["model", "batch", "recstack ms/step", "plain ms/step", "ratio (means)"]
        parts.append(title + "\n\n" + md_table([*headers, "ratio (medians)", "<= 1.15x"], rows))
    return "\n\n".join(parts) or "_no `step_overhead*.json` yet_"


def _recipe(flags: list[str]) -> str:
    """["--model.init_args.loss.kind", "gbce", ...] -> "kind=gbce ..."."""
    pairs = zip(flags[::2], flags[1::2], strict=True)
    return " ".join(f"{flag.rpartition('.')[2]}={value}" for flag, value in pairs) or "shipped"


def loss_learning_table() -> str:
    """loss_learning*.json: SASRec on ML-100K with each loss recipe, against full CE."""
    parts = []
    for path in sorted(RESULTS.glob("loss_learning*.json")):
        d = load(path.name)
        rows = [
            [name, _recipe(r["flags"]), f"{r['best_val_ndcg@10']:.4f}",
             f"{r['last_val_ndcg@10']:.4f}", f"{r['ratio_to_ce']:.3f}",
             "met" if r["learns"] else "missed", f"{r['test_ndcg@10']:.4f}", num(r["fit_seconds"])]
            for name, r in d["recipes"].items()
        ]  # fmt: skip
        title = f"`{path.name}` (seed {d['seed']}, {d['epochs']} epochs, no early stop)"
        headers = ["loss", "recipe", "best val NDCG@10", "last", "x CE"]
        target = f">= {d['target_ratio']}x CE"
        table = md_table([*headers, target, "test NDCG@10 (best epoch)", "fit s"], rows)
        parts.append(title + "\n\n" + table)
    return "\n\n".join(parts) or "_no `loss_learning*.json` yet_"


TABLES: dict[str, Callable[[], str]] = {
    "Data preparation (CPU)": prepare_table,
    "Training (CPU, this machine)": lambda: train_table("train_bench.json"),
    "Training (GPU)": lambda: (
        train_table("gpu/train_bench_gpu.json")
        + "\n\n"
        + train_table("gpu/train_bench_gpu_20m.json")
    ),
    "Training step overhead (CPU, step_overhead)": step_overhead_table,
    "Losses that learn (ML-100K, loss_learning)": loss_learning_table,
    "Model quality": quality_table,
    "Serving engines side by side (engine_compare)": engine_tables,
    "Tail-latency fixes, before and after (stall_fixes)": lambda: (
        stall_fixes_table() + "\n\n" + seal_cost_table()
    ),
    "Load tests (load_test)": load_test_table,
    "Faults under load (faults)": faults_tables,
    "Inference and retrieval (inference_bench)": inference_tables,
}


def render() -> str:
    parts = []
    for title, table in TABLES.items():
        try:
            body = table()
        except (TypeError, KeyError) as exc:  # a result file missing or from an older version
            body = f"_not available: {type(exc).__name__} {exc}_"
        parts.append(f"### {title}\n\n{body}")
    return "\n\n".join(parts)


def _fill(path: Path, start: str, end: str, body: str) -> tuple[str, str] | None:
    """(current text, text with `body` between the markers); None when a marker is missing."""
    text = path.read_text()
    if start not in text or end not in text:
        print(f"error: {path} lacks the {start} … {end} markers", file=sys.stderr)
        return None
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return text, f"{head}{start}\n\n{body}\n\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a README is not up to date")
    args = parser.parse_args(argv)
    blocks = [
        (README, START, END, render()),
        (README, AMAZON_START, AMAZON_END, amazon_tables()),
        (MAIN_README, ENGINES_START, ENGINES_END, engine_headlines()),
        (MAIN_README, ANCHORS_START, ANCHORS_END, anchors_table()),
    ]
    stale = []
    for path, start, end, body in blocks:  # each block reads the file its last write left
        filled = _fill(path, start, end, body)
        if filled is None:
            return 2
        text, updated = filled
        if updated != text:
            stale.append(path)
            if not args.check:
                path.write_text(updated)
                print(f"wrote the tables of {path} ({start})")
    if args.check and stale:
        names = ", ".join(sorted({str(p) for p in stale}))
        print(f"{names} stale: run benchmarks/results_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

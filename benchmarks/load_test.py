"""Load-test a running recstack service: open-loop arrivals, a realistic mix, JSON and plots.

    # a service first, e.g.: RECSTACK_APP_KEYS=$KEY recstack serve --config configs/serve_ml100k.yaml
    export RECSTACK_API_KEY=$KEY
    .venv/bin/python benchmarks/load_test.py                      # 200 req/s for 30 s (+5 s warm-up)
    .venv/bin/python benchmarks/load_test.py --step               # raise the rate until p99 > 15 ms
    .venv/bin/python benchmarks/load_test.py --url http://10.0.0.5:8000 --allow-remote --rate 1000

Fixed mode sends --rate requests/s for --duration seconds after --warmup seconds that are
sent but not counted. Step mode runs steps of --step-duration seconds from --start-rate,
multiplying by --step-factor until --patience steps in a row fail (p99 above --p99-target
or errors above --error-budget) or --max-rate / --max-total is reached, then bisects --refine
times between the highest sustained rate and the first failed one above it; it reports the
highest sustained rate. Latency is counted from each request's scheduled send time (benchmarks/open_loop.py);
the mix is benchmarks/load_mix.py's (80 % recommend, 15 % events, 5 % similar by default).

Writes --out (JSON: per step and endpoint, sent/ok/errors, p50…p99.9/max, throughput, errors
by status and exception, fallbacks, arms, client/server/host CPU, a per-second timeline) and
two PNGs beside it. A server that is down or refuses the key is reported (exit 1), never a
traceback; errors during the run are counted, not fatal.
"""

import argparse
import json
import os
import platform
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import load_plots
from cpu_use import CpuMeter
from load_mix import DEFAULT_MIX, Catalogue, Mix, parse_mix
from open_loop import Timeline, account, check_loopback, per_second, run_open_loop
from stalls import stalls_in_window

RESULTS = Path(__file__).parent / "results"
SEND_LAG_WARN_MS = 10.0  # the client started requests this late (p99): it may be the bottleneck


def preflight(url: str, headers: dict, user_id: str) -> tuple[str | None, str | None]:
    """(error, warning) from GET /healthz and one recommend call before the load starts."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        return None, f"GET /healthz answered {exc.code}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return (
            f"no recstack service answers at {url} ({reason}); start one with "
            "`recstack serve --config configs/serve_ml100k.yaml` or pass --url",
            None,
        )
    body = json.dumps({"user_id": user_id, "k": 1}).encode()
    request = urllib.request.Request(
        url + "/v1/recommend", data=body, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return (
                f"the service refused the API key ({exc.code}): set RECSTACK_API_KEY or pass "
                "--api-key with an app key the service accepts",
                None,
            )
        return None, f"a first POST /v1/recommend answered {exc.code}; errors will be counted"
    except OSError as exc:
        return None, f"a first POST /v1/recommend failed ({exc}); errors will be counted"
    return None, None


def run_step(args, headers: dict, rate: float, index: int, duration: float):
    """One open-loop run at `rate`: (result dict, timeline)."""
    n = round(rate * (args.warmup + duration)) + 1
    mix = Mix(
        args.catalogue, n, args.mix, args.cold, args.explain, args.skew, args.k, args.seed + index
    )
    with CpuMeter(args.url if args.local else None) as meter:
        timeline = run_open_loop(
            args.url,
            rate,
            duration,
            args.warmup,
            mix,
            allow_remote=True,  # checked in main
            headers=headers,
            pool_limit=args.pool_limit,
            timeout_s=args.timeout,
        )
    lag = timeline.send_lag_ms
    lag_p99 = float(np.percentile(lag, 99)) if lag.size else None
    result = {
        "offered_rps": rate,
        "measured_s": timeline.measured_s,
        "overall": account(timeline),
        "endpoints": {name: account(timeline, name) for name in args.mix},
        "send_lag_ms": {
            "p99": lag_p99,
            "max": float(lag.max()) if lag.size else None,
        },
        "cpu": meter.result,
        "warmup": timeline.warmup,
        "timeline": per_second(timeline),
        "window_start_unix": timeline.window_start_unix,
        "client_behind": lag_p99 is not None and lag_p99 > SEND_LAG_WARN_MS,
    }
    if args.stall_log:
        result["stalls"] = stalls_in_window(
            args.stall_log, timeline.window_start_unix, timeline.measured_s
        )
    return result, timeline


def sustained(result: dict, args) -> bool:
    """The step met the p99 target and the error budget."""
    measured = (
        result["overall"] if args.slo_endpoint == "all" else result["endpoints"][args.slo_endpoint]
    )
    p99 = measured["latency_ms"]["p99"]
    error_share = measured["errors"] / max(measured["sent"], 1)
    return p99 is not None and p99 <= args.p99_target and error_share <= args.error_budget


def step_rates(args, run) -> list[dict]:
    """Geometric steps until --patience steps in a row are not sustained, then bisection
    between the highest sustained rate and the first failed rate above it.

    Latency need not grow with the rate (an idle server wakes up slowly, a hiccup can break
    one short step's p99), so one failed step does not end the search. `run(rate)` -> result.
    """
    started, steps, streak = time.monotonic(), [], 0
    rate = args.start_rate
    while rate <= args.max_rate and time.monotonic() - started < args.max_total:
        steps.append(run(rate))
        streak = 0 if steps[-1]["sustained"] else streak + 1
        if streak >= args.patience:
            break
        rate *= args.step_factor
    for _ in range(args.refine):
        passed = [s["offered_rps"] for s in steps if s["sustained"]]
        best = max(passed, default=None)
        above = [
            s["offered_rps"]
            for s in steps
            if not s["sustained"] and best and s["offered_rps"] > best
        ]
        if best is None or not above or min(above) - best < 1:
            break
        if time.monotonic() - started >= args.max_total:
            break
        steps.append(run(round((best + min(above)) / 2, 1)))
    return steps


def summary_line(result: dict) -> str:
    lat = result["overall"]["latency_ms"]
    shown = " ".join(
        f"{p} {lat[p]:.1f}" if lat[p] is not None else f"{p} –" for p in ("p50", "p99", "max")
    )
    overall = result["overall"]
    flags = " (client behind schedule)" if result["client_behind"] else ""
    cpu = result["cpu"].get("server_cores_used")
    server = f", server {cpu:.2f} cores" if cpu is not None else ""
    return (
        f"{result['offered_rps']:g} req/s: {overall['ok']}/{overall['sent']} ok, "
        f"{overall['throughput_rps']:.0f} ok/s, ms {shown}, errors {overall['errors']}"
        f"{server}{flags}"
    )


def mix_arg(text: str) -> dict[str, float]:
    try:
        return parse_mix(text)
    except ValueError as exc:  # argparse shows the message of this type only
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    parser.add_argument(
        "--dataset",
        type=Path,
        default=Path("data/ml-100k"),
        help="prepared dataset the user and item ids are drawn from",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("RECSTACK_API_KEY"),
        help="app key (default: $RECSTACK_API_KEY)",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="fixed mode: requests/s")
    parser.add_argument("--duration", type=float, default=30.0, help="fixed mode: measured s")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds sent, not counted (each step)"
    )
    parser.add_argument(
        "--mix",
        type=mix_arg,
        default=DEFAULT_MIX,
        help="endpoint shares, e.g. recommend=0.8,events=0.15,similar=0.05",
    )
    parser.add_argument(
        "--cold", type=float, default=0.05, help="share of recommend calls for unseen users"
    )
    parser.add_argument(
        "--explain", type=float, default=0.1, help="share of recommend calls with explain"
    )
    parser.add_argument(
        "--skew", type=float, default=1.0, help="user popularity skew: P(user) ∝ interactions^skew"
    )
    parser.add_argument("--k", type=int, default=10, help="items per recommendation")
    step = parser.add_argument_group("step mode")
    step.add_argument("--step", action="store_true", help="find the highest sustained rate")
    step.add_argument("--start-rate", type=float, default=50.0)
    step.add_argument("--step-factor", type=float, default=1.5)
    step.add_argument("--max-rate", type=float, default=5000.0)
    step.add_argument("--step-duration", type=float, default=10.0, help="measured s per step")
    step.add_argument(
        "--patience", type=int, default=2, help="stop after this many failed steps in a row"
    )
    step.add_argument(
        "--refine", type=int, default=2, help="bisection steps after the first failure"
    )
    step.add_argument(
        "--max-total", type=float, default=600.0, help="stop stepping after this many s"
    )
    step.add_argument("--p99-target", type=float, default=15.0, help="ms")
    step.add_argument("--error-budget", type=float, default=0.001, help="max share of errors")
    step.add_argument(
        "--slo-endpoint",
        default="all",
        choices=["all", *DEFAULT_MIX],
        help="the requests the target applies to",
    )
    parser.add_argument("--pool-limit", type=int, default=256, help="max open connections")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request limit, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    parser.add_argument("--label", default="", help='what is loaded, e.g. "uvicorn, 2 workers"')
    parser.add_argument(
        "--stall-log",
        type=Path,
        help="the folder the service writes stalls to (it runs with RECSTACK_STALL_LOG=<it>): "
        "each step's stalls are summarised and plotted under its latency",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "load_test.json")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    positive = {
        "--rate": args.rate,
        "--duration": args.duration,
        "--start-rate": args.start_rate,
        "--step-duration": args.step_duration,
        "--timeout": args.timeout,
    }
    bad = [name for name, value in positive.items() if value <= 0]
    if bad or args.patience < 1 or args.warmup < 0 or args.step_factor <= 1 or args.k < 1:
        parser.error(
            f"{', '.join(bad) or 'these'} must be > 0, --patience >= 1, --warmup >= 0, --step-factor > 1, --k >= 1"
        )
    if not (0 <= args.cold <= 1 and 0 <= args.explain <= 1 and 0 <= args.error_budget <= 1):
        parser.error("--cold, --explain and --error-budget are shares in [0, 1]")
    if args.slo_endpoint != "all" and args.slo_endpoint not in args.mix:
        parser.error(f"--slo-endpoint {args.slo_endpoint} gets no requests in --mix")
    args.url = args.url.rstrip("/")
    try:
        check_loopback(args.url)
        args.local = True
    except ValueError as exc:
        if not args.allow_remote:
            parser.error(str(exc))
        args.local = False
    try:
        args.catalogue = Catalogue.from_dataset(args.dataset)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if not headers:
        print("note: no --api-key or RECSTACK_API_KEY; sending no Authorization header")
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config.pop("catalogue")
    config["api_key"] = "set" if args.api_key else None
    document = {
        "benchmark": "load_test",
        "mode": "step" if args.step else "fixed",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "aiohttp": aiohttp.__version__},
        "config": config,
    }
    error, warning = preflight(args.url, headers, args.catalogue.user_ids[0])
    if warning:
        print(f"warning: {warning}")
    if error:
        print(f"error: {error}", file=sys.stderr)
        _write(args.out, document | {"error": error})
        return 1

    runs: list[tuple[float, Timeline]] = []

    def run(rate: float) -> dict:
        duration = args.step_duration if args.step else args.duration
        result, timeline = run_step(args, headers, rate, len(runs), duration)
        result["sustained"] = sustained(result, args)
        runs.append((rate, timeline))
        print(summary_line(result) + ("" if result["sustained"] or not args.step else "  ✗"))
        return result

    steps = step_rates(args, run) if args.step else [run(args.rate)]
    document["steps"] = steps
    ok_rates = [s["offered_rps"] for s in steps if s["sustained"]]
    document["highest_sustained_rps"] = max(ok_rates) if ok_rates else None
    document["target"] = {
        "p99_ms": args.p99_target,
        "error_budget": args.error_budget,
        "endpoint": args.slo_endpoint,
    }
    if not args.no_plots:
        stem = args.out.with_suffix("")
        document["plots"] = [
            str(load_plots.latency_vs_rate(steps, args.p99_target, Path(f"{stem}_vs_rate.png"))),
            str(
                load_plots.latency_over_time(
                    runs, Path(f"{stem}_over_time.png"), [s.get("stalls") for s in steps]
                )
            ),
        ]
    _write(args.out, document)
    if args.step:
        best = document["highest_sustained_rps"]
        print(
            f"highest sustained rate (p99 ≤ {args.p99_target:g} ms, errors ≤ "
            f"{args.error_budget:.1%}): {best if best is not None else 'none'} req/s"
        )
    print(f"→ {args.out}")
    return 0 if any(s["overall"]["ok"] for s in steps) else 1


def _write(out: Path, document: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

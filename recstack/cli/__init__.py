"""The `recstack` command: one jsonargparse CLI for every stage.

    recstack data prepare --source ml-100k --out data/ml-100k
    recstack data synth --users 6000 --items 3700 --events 1000000 --out data/synth-1m
    recstack data forget --dataset data/ml-100k --user 42 [--user 43 ...] [--artifact DIR]
    recstack data extend --base data/v1 --events runs/serve/events --out data/v2 \
        [--since auto] [--feedback view=1,click=1,purchase=1,rating>=4]
    recstack eval baselines --dataset data/ml-100k
    recstack eval artifacts --retriever artifacts/two-tower/v1 --ranker artifacts/sasrec/v1 \
        --dataset data/ml-100k [--split loo] [--retrieve_n 100] [--out FILE.json]
    recstack train --config configs/train/sasrec_ml100k.yaml
    recstack tune --config configs/train/sasrec_ml100k.yaml --search configs/search/sasrec.yaml
    recstack export --ckpt runs/sasrec-ml100k/checkpoints/best.ckpt --out artifacts/sasrec/v1
    recstack serve --config configs/serve_ml100k.yaml
    recstack events compact --log runs/serve/events
    recstack retrain --config configs/loop/ml100k.yaml [--history | --rollback]
    recstack monitor --events runs/serve/events --artifact artifacts/sasrec/v1 [--window 1d] \
        [--config configs/monitor/default.yaml]     # exit 3: a drift threshold breached
    recstack demo

This package is the face: the one layer that may import every stage (tests/test_layers.py).
Each subcommand is a plain function whose signature and docstring are the CLI (flags, types,
defaults, --help); any flag can also come from a YAML file with --config. Only the chosen
command's module is imported, so `recstack data ...` starts without torch.
"""

import importlib
import sys

from recstack.errors import RecstackError

COMMANDS: dict[str, str | dict[str, str]] = {
    "data": {
        "prepare": "recstack.datasets.prepare:prepare",
        "synth": "recstack.datasets.synth:synthesize",
        "extend": "recstack.datasets.extend:extend",
    },
    "eval": {
        "baselines": "recstack.training.eval.baselines_cmd:run_baselines",
        "artifacts": "recstack.serving.pipeline_eval:eval_artifacts",
    },
    "export": "recstack.training.export.export_cmd:export",
    "demo": "recstack.cli.demo:demo",
    "experiments": {"report": "recstack.serving.experiments_cmd:report"},
    "events": {
        "compact": "recstack.serving.events_cmd:compact_log",
        "rebuild": "recstack.serving.events_cmd:rebuild",
    },
}


EPILOG = (
    "Training and tuning take LightningCLI configs and have their own --help: "
    "recstack train --config configs/train/<x>.yaml; "
    "recstack tune --config configs/train/<x>.yaml --search configs/search/<x>.yaml; "
    "recstack serve --config configs/serve_ml100k.yaml [--update]; "
    "recstack retrain --config configs/loop/<x>.yaml [--history | --rollback]; "
    "recstack monitor --events DIR --artifact DIR [--window 1d] [--config YAML] [--out DIR] "
    "(drift report; exit 3 when a threshold is breached); "
    "recstack data forget --dataset DIR --user ID [--user ID ...] [--artifact DIR] "
    "(removes users from datasets and artifacts' user features)"
)


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _components(argv: list[str]) -> dict:
    """The command tree, importing only the command named in argv (all of them for --help)."""
    group = COMMANDS.get(argv[0]) if argv else None
    if isinstance(group, str):
        return {argv[0]: _load(group)}
    if isinstance(group, dict) and len(argv) > 1 and argv[1] in group:
        return {argv[0]: {argv[1]: _load(group[argv[1]])}}
    return {
        name: _load(sub) if isinstance(sub, str) else {k: _load(v) for k, v in sub.items()}
        for name, sub in COMMANDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import auto_cli

    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["train"]:  # LightningCLI has its own parser (trainer/model/data sections)
            from recstack.training.train_cli import train

            train(argv[1:])
            return 0
        if argv[:1] == ["tune"]:  # parses its own flags, then runs `train` configs in-process
            from recstack.training.tuning.tune_cli import tune

            tune(argv[1:])
            return 0
        if argv[:2] == ["data", "forget"]:  # its own parser: --user, --dataset repeat
            from recstack.datasets.forget import forget_cli

            forget_cli(argv[2:])
            return 0
        if argv[:1] == ["retrain"]:  # --config is the loop YAML
            from recstack.loop.retrain import retrain_cli

            retrain_cli(argv[1:])
            return 0
        if argv[:1] == ["monitor"]:  # its own parser; exit 3 when a threshold is breached
            from recstack.loop.monitor import monitor_cli

            return monitor_cli(argv[1:])
        if argv[:1] == ["serve"]:  # --config is the Serve YAML, not jsonargparse's own --config
            from recstack.serving.serve_cmd import serve_cli

            serve_cli(argv[1:])
            return 0
        auto_cli(_components(argv), args=argv, as_positional=False, epilog=EPILOG)
    except RecstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0

"""`recstack tune`: an Optuna study over a training config, with a search space from YAML.

    recstack tune --config configs/train/sasrec_ml100k.yaml \\
        --search configs/search/sasrec.yaml --study sasrec-ml100k --n-trials 20

Each trial is a `recstack train` run (in runs/tune/<study>/trials/NNNN) scored by its best
validation NDCG@10 and pruned early when it falls behind. Run the same command again to
resume, or on other machines with a shared --storage (PostgreSQL) to add workers. At the end
the worker writes the study report and best.yaml (`recstack train --config best.yaml`).
"""

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from jsonargparse import ArgumentParser
from jsonargparse.typing import NonNegativeInt
from optuna.trial import TrialState
from rich.console import Console

from recstack.errors import RecstackError
from recstack.training.interrupt import deferred_interrupt, raise_if_requested
from recstack.training.train_cli import check_config
from recstack.training.tuning.objective import Objective, TrialFailed
from recstack.training.tuning.report import write_report
from recstack.training.tuning.search_space import SearchSpace, load_search_space
from recstack.training.tuning.study import (
    DEFAULT_TRIAL,
    default_storage,
    finished_trials,
    open_study,
    recover_dead_workers,
    space_hash,
)
from recstack.training.tuning.trial_config import (
    MISSING,
    get_dotted,
    read_config,
    trial_config,
)
from recstack.urls import redacted


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="recstack tune", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", type=Path, required=True, help="base training config")
    parser.add_argument("--search", type=Path, required=True, help="search space YAML")
    parser.add_argument(
        "--study",
        type=str | None,
        default=None,
        help="study name (default: the config's file name)",
    )
    parser.add_argument(
        "--storage",
        type=str | None,
        default=None,
        help="Optuna storage URL (default: sqlite:///<out>/study.db; "
        "postgresql://user:pw@host/db for several machines)",
    )
    parser.add_argument(
        "--out",
        type=Path | None,
        default=None,
        help="study dir for trials and the report (default: runs/tune/<study>)",
    )
    parser.add_argument(
        "--n-trials",
        "--n_trials",
        type=NonNegativeInt,
        default=20,
        help="finished trials the whole study should reach (all workers); 0 only writes the report",
    )
    parser.add_argument(
        "--timeout",
        type=float | None,
        default=None,
        help="this worker starts no new trial after this many seconds",
    )
    parser.add_argument(
        "--worker-id",
        "--worker_id",
        type=NonNegativeInt,
        default=0,
        help="give parallel workers of one study different ids (sampler seed)",
    )
    parser.add_argument(
        "--default-trial",
        "--default_trial",
        type=bool,
        default=True,
        help="queue the base config's own values as the study's first trial",
    )
    return parser


def _accounted(study: optuna.Study) -> int:
    """Finished trials plus those running now (in this or another worker)."""
    return finished_trials(study) + len(
        study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    )


def check_search_space(base: dict, space: SearchSpace, out: Path) -> dict:
    """Fail before the first trial on a key or value the training config does not accept.
    Returns the base config with the fixed values, resolved (defaults filled in)."""
    resolved = check_config(trial_config(base, space.fixed, out / "trials" / "check"))
    for param in space.params:
        if get_dotted(resolved, param.name, MISSING) is MISSING:
            raise RecstackError(
                f"search param {param.name} is not a setting of this training config "
                "(keys are `recstack train` flags without the dashes, e.g. model.optim.lr)"
            )
    return resolved


def tune(argv: list[str]) -> dict:
    try:
        args = make_parser().parse_args(argv)
    except Exception as exc:  # argparse/jsonargparse: unknown flag, wrong type
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise RecstackError(f"{detail} (see `recstack tune --help`)") from None
    if args.timeout is not None and args.timeout <= 0:
        raise RecstackError(f"--timeout must be a number of seconds > 0, got {args.timeout:g}")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    console = Console(stderr=True)
    space = load_search_space(args.search)
    base = read_config(args.config)
    name = args.study or Path(args.config).stem
    out = Path(args.out or Path("runs/tune") / name)
    out.mkdir(parents=True, exist_ok=True)
    resolved = check_search_space(base, space, out)
    storage = args.storage or default_storage(out)
    seed = space.sampler.get("seed", 0)
    study, new = open_study(
        name,
        storage,
        sampler=None,
        pruner=space.make_pruner(),
        fingerprint=space_hash(base, space.source),
    )
    # A resumed or joining worker must not replay the sampler's first draws.
    if seed is not None:
        seed = int(
            np.random.SeedSequence([seed, len(study.trials), args.worker_id]).generate_state(1)[0]
        )
    study.sampler = space.make_sampler(seed)
    queued = any(t.user_attrs.get(DEFAULT_TRIAL) for t in study.get_trials(deepcopy=False))
    if args.default_trial and args.worker_id == 0 and not queued:  # worker 0 only: once
        values = space.values_of({p.name: get_dotted(resolved, p.name) for p in space.params})
        study.enqueue_trial(values, user_attrs={DEFAULT_TRIAL: True}, skip_if_exists=True)
    lost = recover_dead_workers(study)
    if lost:
        console.print(f"re-queued trials {lost}: their worker on this host had stopped")
    console.print(
        f"study {name!r} ({'new' if new else 'joined'}) at {redacted(storage)}: "
        f"{finished_trials(study)}/{args.n_trials} trials finished"
    )
    started = time.monotonic()
    objective = Objective(base, space, out, console)
    try:
        with deferred_interrupt():  # Ctrl-C at a batch end or between trials, never dropped
            while _accounted(study) < args.n_trials:
                raise_if_requested()
                if args.timeout is not None and time.monotonic() - started >= args.timeout:
                    console.print(f"timeout: {args.timeout:.0f} s passed, no new trials here")
                    break
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)
            raise_if_requested()
    except KeyboardInterrupt:
        console.print(f"interrupted: run the same command again to resume study {name!r}")
        raise
    return write_report(study, out, Console(width=160))

"""Opening a study on its storage, and keeping it healthy across workers and restarts.

- Storage: SQLite in the study dir by default; any Optuna RDB URL (PostgreSQL, MySQL) for
  workers on several machines. The same command started again, or elsewhere, joins the study.
- Heartbeats: a worker that dies (kill -9, lost machine) leaves its trial RUNNING; after the
  grace period another worker marks it failed and re-queues its params. A worker that starts
  on the same host does this at once for trials whose process is gone.
- The trial budget (`--n-trials`) counts finished trials of the whole study (complete, pruned,
  or failed with a reason), not trials lost to a dead worker, so a resumed study stops at N.
"""

import hashlib
import json
import os
import socket
import time
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event

from recstack.errors import RecstackError, first_line
from recstack.urls import redacted

HEARTBEAT_S = 30
GRACE_S = 120
RETRY_OF = "retry_of"  # user attr of a re-queued trial: the number of the trial it replaces
RETRY_REASON = "retry_reason"  # ... and why that one was lost
FAIL_REASON = "fail_reason"  # user attr: why a trial failed (its own fault: config, NaN, OOM)
DEFAULT_TRIAL = "default_config"  # user attr of the trial queued from the base config
SPACE_HASH = "space_hash"  # study user attr: base config + search space it was created with


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{(Path(study_dir) / 'study.db').resolve()}"


def requeue(
    study: optuna.Study, trial: FrozenTrial | optuna.Trial, reason: str, mark_failed: bool = True
) -> None:
    """Mark a lost trial failed (unless the caller's Optuna will) and queue its params again
    as a new trial that records which trial it replaces and why."""
    if mark_failed:
        try:
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # already finished (e.g. failed by the heartbeat check)
    study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number, RETRY_REASON: reason})


def lost_trials(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> dict[int, str]:
    """Trials lost with their worker (and re-queued): number -> reason. `trials`: the
    study's trials when the caller has already read them."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    return {
        t.user_attrs[RETRY_OF]: t.user_attrs.get(RETRY_REASON, "")
        for t in trials
        if RETRY_OF in t.user_attrs
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_workers(study: optuna.Study) -> list[int]:
    """Re-queue RUNNING trials whose worker process on this host no longer exists."""
    host = socket.gethostname()
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and "pid" in attrs and not _pid_alive(attrs["pid"]):
            requeue(study, trial, f"worker pid {attrs['pid']} on {host} stopped")
            lost.append(trial.number)
    return lost


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards --n-trials (lost ones are re-queued, so they do not)."""
    trials = study.get_trials(deepcopy=False)
    lost = lost_trials(study, trials)
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in trials if t.state in done and t.number not in lost)


def _write_lock_at_begin(engine) -> None:
    """SQLite: every transaction takes the write lock when it begins (BEGIN IMMEDIATE), so it
    waits for another writer (the connect timeout) instead of failing. A deferred transaction
    that reads and then writes fails at once with "database is locked" when another connection
    wrote in between, whatever the timeout; the heartbeat thread and a trial's own commits
    did that on a busy machine, failing the trial."""

    @event.listens_for(engine, "connect")
    def _driver_begins_nothing(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the sqlite3 module: BEGIN comes from below

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections opened before the listeners


def make_storage(url: str, attempts: int = 5) -> RDBStorage:
    """Open (and on first use create) the storage. Workers starting together race to create
    its tables; the loser retries and finds them."""
    sqlite = url.startswith("sqlite")
    engine = {"connect_args": {"timeout": 60}} if sqlite else {}
    for attempt in range(attempts):
        try:
            storage = RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=lambda study, trial: requeue(
                    study, trial, "no heartbeat from its worker"
                ),
            )
            if sqlite:
                _write_lock_at_begin(storage.engine)
            return storage
        except ImportError as exc:
            raise RecstackError(
                f"storage {redacted(url)}: {first_line(exc)} "
                "(for PostgreSQL: pip install 'recstack[postgres]')"
            ) from None
        except Exception as exc:  # sqlalchemy: bad URL, unreachable server, creation race
            if attempt == attempts - 1:
                raise RecstackError(
                    f"cannot open study storage {redacted(url)}: {first_line(exc)}"
                ) from None
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def space_hash(base_config: dict, search: dict) -> str:
    """What workers must agree on: the search space and the base config, except paths that
    may differ between machines (run dir, dataset location)."""
    config = {k: v for k, v in base_config.items() if k != "run_dir"}
    config["data"] = {k: v for k, v in (config.get("data") or {}).items() if k != "dataset"}
    text = json.dumps({"config": config, "search": search}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_study(
    name: str, storage_url: str, sampler, pruner, fingerprint: str
) -> tuple[optuna.Study, bool]:
    """Create the study or join it; refuse to join one made from another config or space.
    Returns the study and whether it was new."""
    storage = make_storage(storage_url)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    existing = study.user_attrs.get(SPACE_HASH)
    if existing is None:
        study.set_user_attr(SPACE_HASH, fingerprint)
    elif existing != fingerprint:
        raise RecstackError(
            f"study {name!r} in {storage_url} was created from another training config or "
            "search space; use the same files to join it, or a new --study name"
        )
    return study, existing is None

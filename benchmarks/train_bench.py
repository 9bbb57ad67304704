"""Training speed and memory of SASRec and the two-tower model at several dataset sizes.

    .venv/bin/python benchmarks/train_bench.py              # ml100k + synth-1m: minutes on 2 cores
    .venv/bin/python benchmarks/train_bench.py --sizes synth-1m,synth-20m --device cuda
    .venv/bin/python benchmarks/train_bench.py --threads 1  # a CPU shared with other jobs

Each size is prepared once under --data_dir (ml100k: the real MovieLens-100K; synth-1m and
synth-20m: `recstack data synth` logs of MovieLens-1M and -20M size). Each model trains with
the model, loss and optimiser settings and the batch size of configs/train/<model>_ml100k.yaml,
in bf16-mixed on CUDA and 32-true on CPU (as `recstack train`), without logger, checkpoints or
progress bar. A Lightning callback measures, on the last epoch (the first one warms up):

- epoch_s: one training epoch, validation excluded. When only --max_batches batches run (the
  CPU default for synth sizes), `epoch_s_estimated` scales them up to a whole epoch instead;
- samples_per_s: training examples per second (SASRec: non-PAD target positions; two-tower:
  events);
- data_wait_share: share of the training time between one step's end and the next step's start
  (fetching and collating the batch, copying it to the device). On CUDA steps run ahead of the
  GPU, so this bounds the time the GPU waits for data from above;
- val_s: the full-ranking validation pass; when it ranks only --val_users users (the CPU default
  for synth-20m), `val_s_estimated` scales it up to all validation users;
- peak_rss_mib of the process during the run, and max_memory_allocated on CUDA.

Targets (the issue; one H100, bf16): SASRec epoch <= 1 s at ML-1M size (synth-1m) and <= 15 s
at ML-20M size (synth-20m); validation <= 1 s at ML-1M size. `meets_target` is set on CUDA only.
Writes benchmarks/results/train_bench.json (or --out).
"""

import importlib
import json
import logging
import platform
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import lightning
import torch
import yaml
from jsonargparse import auto_cli
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch import Callback, Trainer, seed_everything
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))  # this folder's modules, however it is run
from machine_info import machine, peak_rss_mib, reset_peak_rss

from recstack.datasets.prepare import prepare
from recstack.datasets.synth import synthesize
from recstack.schema import PAD_IDX
from recstack.training.compile_net import CompileNet
from recstack.training.data.datamodule import RecDataModule

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = {
    "sasrec": ROOT / "configs" / "train" / "sasrec_ml100k.yaml",
    "two_tower": ROOT / "configs" / "train" / "two_tower_ml100k.yaml",
}


@dataclass(frozen=True)
class Size:
    """A synthetic log of (users, items, events), or the real ML-100K when users == 0.

    cpu_batches / cpu_val_users: training batches per epoch and validation users measured on
    CPU unless --max_batches / --val_users say otherwise (None = all).
    """

    users: int = 0
    items: int = 0
    events: int = 0
    cpu_batches: int | None = None
    cpu_val_users: int | None = None


SIZES = {
    "ml100k": Size(),
    "synth-1m": Size(6_000, 3_700, 1_000_000, cpu_batches=50),
    "synth-20m": Size(138_000, 27_000, 20_000_000, cpu_batches=50, cpu_val_users=5_000),
    "tiny": Size(200, 100, 5_000, cpu_batches=3, cpu_val_users=100),  # smoke test
}
TARGETS = {  # "size/model" -> {measure: max seconds}, on one H100 in bf16
    "synth-1m/sasrec": {"epoch_s": 1.0, "val_s": 1.0},
    "synth-1m/two_tower": {"val_s": 1.0},
    "synth-20m/sasrec": {"epoch_s": 15.0},
}


def prepared_dataset(name: str, size: Size, data_dir: Path) -> Path:
    """The prepared dataset `data_dir/name`, built on first use."""
    out = data_dir / name
    if (out / "manifest.json").is_file():
        return out
    if not size.users:
        prepare(source="ml-100k", out=out, overwrite=True, quiet=True)
        return out
    raw = data_dir / f"{name}-raw"
    synthesize(raw, size.users, size.items, size.events, seed=0, progress=False, overwrite=True)
    prepare(source=f"synth:{raw}", out=out, overwrite=True, quiet=True)
    shutil.rmtree(raw)
    return out


class ValidationSubset(RecDataModule):
    """RecDataModule whose validation ranks only the first `val_users` users (None: all)."""

    def __init__(self, *args, val_users: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.val_users = val_users

    def eval_set(self, target: str):
        full = super().eval_set(target)
        if target != "valid" or not self.val_users or full.n_users <= self.val_users:
            return full
        return full.slice(0, self.val_users)

    def valid_users(self) -> tuple[int, int]:
        """(validation users, how many of them are ranked)."""
        return super().eval_set("valid").n_users, self.eval_set("valid").n_users


class TrainMeter(Callback):
    """Per epoch: training seconds (validation excluded), batches, samples, seconds waiting for
    batches, validation seconds. On CUDA it synchronises only at epoch and validation
    boundaries, so steps still overlap with loading the next batch."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    @staticmethod
    def _now(module) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, module) -> None:
        self.started = self.step_end = self._now(module)
        self.epoch = {"batches": 0, "wait_s": 0.0, "first_wait_s": 0.0, "val_s": 0.0}
        self.samples = torch.zeros((), dtype=torch.long, device=module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        wait = time.perf_counter() - self.step_end  # the first one includes the sampler's shuffle
        self.epoch["wait_s"] += wait
        if self.epoch["batches"] == 0:
            self.epoch["first_wait_s"] = wait

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.samples += (batch["targets"] != PAD_IDX).sum()  # stays on the device: no sync
        self.epoch["batches"] += 1
        self.step_end = time.perf_counter()

    def on_validation_start(self, trainer, module) -> None:
        self.val_started = self._now(module)

    def on_validation_end(self, trainer, module) -> None:
        self.epoch["val_s"] += self._now(module) - self.val_started

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epoch["train_s"] = self._now(module) - self.started - self.epoch["val_s"]
        self.epoch["samples"] = int(self.samples)
        self.epoch["loss"] = float(trainer.callback_metrics.get("train/loss_epoch", float("nan")))
        self.epochs.append(
            {k: round(v, 4) if isinstance(v, float) else v for k, v in self.epoch.items()}
        )


def summarise(epoch: dict, batches_per_epoch: int, val_users: int, val_measured: int) -> dict:
    """Headline numbers of one epoch; whole-epoch and all-user figures scaled up where partial."""
    n, train_s, first = epoch["batches"], epoch["train_s"], epoch["first_wait_s"]
    out = {"batches_measured": n, "batches_per_epoch": batches_per_epoch}
    if n < batches_per_epoch:  # the first wait (the epoch's shuffle) happens once per epoch
        out["epoch_s_estimated"] = first + (train_s - first) / n * batches_per_epoch
    else:
        out["epoch_s"] = train_s
    out["per_batch_s"] = train_s / n
    out["samples_per_s"] = epoch["samples"] / train_s
    out["data_wait_share"] = epoch["wait_s"] / train_s
    out |= {"val_users": val_users, "val_users_measured": val_measured}
    scale = val_users / val_measured
    out["val_s_estimated" if val_measured < val_users else "val_s"] = epoch["val_s"] * scale
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def meets_target(key: str, run: dict, cuda: bool) -> bool | None:
    target = TARGETS.get(key)
    if not cuda or not target:
        return None
    value = {m: run.get(m, run.get(f"{m}_estimated")) for m in target}
    return all(value[m] <= limit for m, limit in target.items())


def size_default(given: int | None, cpu_default: int | None, cuda: bool) -> int | None:
    """An option as given (0 = all), else the size's CPU default on CPU; None = all."""
    value = given if given is not None else None if cuda else cpu_default
    return value or None


def bench_one(name: str, model: str, dataset: Path, cuda: bool, opts: dict) -> dict:
    """Train `model` on `dataset` for opts["epochs"] epochs and measure (see module docstring)."""
    config = yaml.safe_load(CONFIGS[model].read_text())
    module_name, _, class_name = config["model"]["class_path"].rpartition(".")
    task_class = getattr(importlib.import_module(module_name), class_name)
    settings = config["model"]["init_args"] | {"batch_size": config["data"]["batch_size"]}
    rss_per_run = reset_peak_rss()
    seed_everything(0, verbose=False)
    task = task_class(**config["model"]["init_args"], seed=0)
    size = SIZES[name]
    max_batches = size_default(opts["max_batches"], size.cpu_batches, cuda)
    data = ValidationSubset(
        dataset,
        batch_size=settings["batch_size"],
        num_workers=opts["num_workers"],
        cache_dir=opts["data_dir"] / "arrays",
        val_users=size_default(opts["val_users"], size.cpu_val_users, cuda),
    )
    started = time.perf_counter()  # build the eval set up front: later epochs reuse it
    val_users = data.valid_users()
    eval_set_s = time.perf_counter() - started
    meter = TrainMeter()
    trainer = Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision="bf16-mixed" if cuda else "32-true",
        max_epochs=opts["epochs"],
        limit_train_batches=max_batches or 1.0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[meter, CompileNet()] if opts["compile"] else [meter],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(task, datamodule=data)
    run = {"size": name, "model": model, "settings": settings, "compiled": opts["compile"]}
    run["dataset"] = data.data.manifest["counts"]
    run |= summarise(meter.epochs[-1], len(trainer.train_dataloader), *val_users)
    run["val_ndcg@10"] = round(float(trainer.callback_metrics["val/ndcg@10"]), 4)
    run["eval_set_build_s"] = round(eval_set_s, 3)
    run["peak_rss_mib"] = round(peak_rss_mib(), 1)
    run["peak_rss_scope"] = "run" if rss_per_run else "process"
    gpu_bytes = torch.cuda.max_memory_allocated() if cuda else None
    run["cuda_max_allocated_mib"] = None if gpu_bytes is None else round(gpu_bytes / 2**20, 1)
    run["meets_target"] = meets_target(f"{name}/{model}", run, cuda)
    run["epochs"] = meter.epochs
    return run


def print_table(runs: list[dict]) -> None:
    """One row per run; "~" marks a figure scaled up from part of an epoch or of the users."""
    table = Table(title="train_bench: last epoch (~ = scaled up from a part)")
    columns = ("size", "model", "batches", "epoch s", "samples/s", "data wait", "val s")
    for column in (*columns, "RSS MiB", "GPU MiB", "target"):
        table.add_column(column, justify="left" if column in ("size", "model") else "right")
    for r in runs:
        epoch = f"{r['epoch_s']:.2f}" if "epoch_s" in r else f"~{r['epoch_s_estimated']:.2f}"
        val = f"{r['val_s']:.2f}" if "val_s" in r else f"~{r['val_s_estimated']:.2f}"
        gpu = r["cuda_max_allocated_mib"]
        table.add_row(
            r["size"], r["model"], f"{r['batches_measured']}/{r['batches_per_epoch']}", epoch,
            f"{r['samples_per_s']:,.0f}", f"{r['data_wait_share']:.0%}", val,
            f"{r['peak_rss_mib']:,.0f}", "-" if gpu is None else f"{gpu:,.0f}",
            {None: "-", True: "[green]yes[/]", False: "[red]no[/]"}[r["meets_target"]],
        )  # fmt: skip
    console = Console()
    console.width = max(console.width, 110)  # a pipe or a narrow terminal would wrap the cells
    console.print(table)


def train_bench(
    sizes: str = "ml100k,synth-1m",
    models: str = "sasrec,two_tower",
    epochs: int = 2,
    max_batches: int | None = None,
    val_users: int | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    num_workers: int = 0,
    threads: int | None = None,
    compile: bool = False,
    out: Path = RESULTS / "train_bench.json",
    data_dir: Path = Path("data/bench"),
) -> dict:
    """Benchmark training speed and memory (see the module docstring).

    Args:
        sizes: comma-separated: ml100k, synth-1m (ML-1M size), synth-20m (ML-20M size), tiny.
        models: comma-separated: sasrec, two_tower.
        epochs: epochs per run; the numbers are those of the last epoch.
        max_batches: training batches per epoch; 0 = all. Default: all on CUDA; on CPU 50 for
            the synth sizes (the epoch time is then an estimate).
        val_users: validation users ranked; 0 = all. Default: all on CUDA; on CPU 5000 for
            synth-20m (the validation time is then an estimate).
        device: auto (CUDA when available), cpu or cuda.
        num_workers: DataLoader worker processes.
        threads: torch CPU threads; default torch's own (one per core).
        compile: torch.compile the network first (as `recstack train --compile true`); the
            first epoch then includes the compilation, so time two or more epochs.
        out: JSON result file.
        data_dir: where the prepared datasets (and their event arrays) are kept between runs.
    """
    size_names, model_names = sizes.split(","), models.split(",")
    unknown = sorted(set(size_names) - set(SIZES) | set(model_names) - set(CONFIGS))
    if unknown:
        sys.exit(f"unknown {unknown}: sizes are {list(SIZES)}, models {list(CONFIGS)}")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here; use --device cpu")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if threads:
        torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=PossibleUserWarning)  # "use more workers"
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # torch 2.13
    opts = {"epochs": max(epochs, 1), "max_batches": max_batches, "val_users": val_users}
    opts |= {"num_workers": num_workers, "data_dir": Path(data_dir), "compile": compile}
    runs = []
    for name in size_names:
        dataset = prepared_dataset(name, SIZES[name], Path(data_dir))
        runs += [bench_one(name, model, dataset, cuda, opts) for model in model_names]
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions |= {"lightning": lightning.__version__, "cuda": torch.version.cuda}
    result = {
        "benchmark": "train_bench",
        "machine": machine(torch_threads=torch.get_num_threads()),
        "versions": versions,
        "device": "cuda" if cuda else "cpu",
        "precision": "bf16-mixed" if cuda else "32-true",
        "config": {"sizes": size_names, "models": model_names} | opts | {"data_dir": str(data_dir)},
        "size_definitions": {name: asdict(SIZES[name]) for name in size_names},
        "targets": {"hardware": "one H100, bf16-mixed", "max_seconds": TARGETS},
        "runs": runs,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(runs)
    return result


def main(argv: list[str] | None = None) -> dict:
    return auto_cli(train_bench, args=argv, as_positional=False)


if __name__ == "__main__":
    main()

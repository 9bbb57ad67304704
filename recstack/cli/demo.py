"""`recstack demo`: the main job end to end on the embedded default, MovieLens-100K.

    prepare -> train SASRec -> train the two-tower retriever -> export both to ONNX
    -> serve them with Ray Serve -> real HTTP calls -> stop the service   (~4 min on 2 CPUs)

1. data: ML-100K is prepared into data/ml-100k (grouplens, or the recbole wheel from PyPI
   when offline), or reused when that directory already holds a valid prepared dataset.
2. SASRec trains briefly with configs/train/sasrec_ml100k.yaml (25 epochs); its full-ranking
   test metrics print next to the baselines (MostPop, EASE, Markov).
3. The two-tower retriever trains briefly with configs/train/two_tower_ml100k.yaml (3 epochs).
4. `recstack export` writes both to artifacts/demo-sasrec-ml100k/v1 and
   artifacts/demo-two-tower-ml100k/v1 (ONNX with a parity check; replaced on every run).
5. The service starts from configs/serve_demo.yaml, copied with the demo's paths and a free
   port (8000 when free) to runs/demo-serve/serve.yaml. Its state (online store, event log,
   Ray's temp dir) lives in runs/demo-serve/, cleared first. A fresh app key and admin key go
   into this process's environment (the replicas inherit it); they are never printed.
6. HTTP calls (recstack/cli/demo_calls.py): recommendations with explanations in both A/B arms,
   events that change the next list at once, an anonymous session, a cold user, similar
   items, a bad request (422) and the A/B report.
7. The service stops, also after an error or Ctrl-C.
"""

import os
import secrets
import shutil
import socket
import time
from pathlib import Path

from recstack.errors import DataError, RecstackError
from recstack.progress import console

REPO = Path(__file__).resolve().parents[2]
if not (REPO / "configs").is_dir():  # an installed, not editable, recstack (the Docker image)
    REPO = Path.cwd()  # …runs from a folder holding configs/ (the image's /app)
SASREC_CONFIG = REPO / "configs" / "train" / "sasrec_ml100k.yaml"
TWO_TOWER_CONFIG = REPO / "configs" / "train" / "two_tower_ml100k.yaml"
SERVE_CONFIG = REPO / "configs" / "serve_demo.yaml"


def demo(
    data_dir: Path = Path("data/ml-100k"),
    run_dir: Path = Path("runs/demo-sasrec-ml100k"),
    max_epochs: int = 25,
    retriever_run_dir: Path = Path("runs/demo-two-tower-ml100k"),
    retriever_epochs: int = 3,
    artifacts: Path = Path("artifacts"),
    serve_dir: Path = Path("runs/demo-serve"),
    port: int = 8000,
    cache: Path | None = None,
) -> dict:
    """Run the main job on MovieLens-100K: prepare -> train -> export -> serve -> HTTP calls.

    Args:
        data_dir: where the prepared ML-100K dataset lives (prepared if missing or invalid).
        run_dir: the SASRec training run's directory (checkpoints, logs, metrics.json;
            an earlier demo's run there is replaced).
        max_epochs: SASRec training epochs (about 5 s each on 2 CPU cores); early stopping
            may end it sooner. The shipped config trains longer for the published numbers.
        retriever_run_dir: the two-tower training run's directory.
        retriever_epochs: two-tower training epochs (about 12 s each on 2 CPU cores).
        artifacts: where the exported models go (demo-<model>-ml100k/v1, replaced).
        serve_dir: the service's state: serve.yaml, online store, event log, Ray temp dir
            (cleared at the start of every demo).
        port: HTTP port of the service (a free one is taken when it is busy).
        cache: download cache dir (default $RECSTACK_CACHE or ~/.cache/recstack).
    """
    from recstack.training.export.export_cmd import export

    started, data_dir = time.perf_counter(), Path(data_dir)
    _prepare(data_dir, cache)
    missing = [str(p) for p in (SASREC_CONFIG, TWO_TOWER_CONFIG, SERVE_CONFIG) if not p.is_file()]
    if missing:
        raise RecstackError(f"{', '.join(missing)} missing; run the demo from a recstack checkout")
    console.rule("2. train SASRec, then test it next to the baselines (full ranking, LOO)")
    sasrec = _train(SASREC_CONFIG, data_dir, run_dir, max_epochs)
    console.rule("3. train the two-tower retriever briefly")
    two_tower = _train(TWO_TOWER_CONFIG, data_dir, retriever_run_dir, retriever_epochs)
    console.rule("4. export both models to ONNX artifacts")
    out = Path(artifacts)
    ranker = export(Path(sasrec["best_checkpoint"]), out / "demo-sasrec-ml100k/v1", True)
    retriever = export(Path(two_tower["best_checkpoint"]), out / "demo-two-tower-ml100k/v1", True)
    calls = _serve_and_call(ranker, retriever, data_dir, Path(serve_dir), port)
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    again = f"recstack serve --config {Path(serve_dir) / 'serve.yaml'}"
    console.print(
        f"demo done in {minutes} min {seconds:02d} s. Serve these models again with "
        f"RECSTACK_APP_KEYS=<a key of 16+ characters> {again}"
    )
    return {
        "sasrec": sasrec,
        "two_tower": two_tower,
        "artifacts": {"ranker": ranker, "retriever": retriever},
        "calls": calls,
    }


def _prepare(data_dir: Path, cache: Path | None) -> None:
    from recstack.dataset_dir import DATASET_KIND
    from recstack.datasets.prepare import prepare
    from recstack.manifest import read_manifest

    try:
        read_manifest(data_dir, DATASET_KIND)
        console.rule("1. data: using the prepared dataset")
        console.print(f"{data_dir} is a valid prepared dataset; delete it to prepare again")
    except DataError:
        console.rule("1. data: prepare MovieLens-100K")
        prepare(source="ml-100k", out=data_dir, overwrite=True, cache=cache)


def _train(config: Path, data_dir: Path, run_dir: Path, epochs: int) -> dict:
    from recstack.training.train_cli import train

    if (Path(run_dir) / "checkpoints").is_dir():  # an earlier demo's run: start it afresh
        shutil.rmtree(run_dir)
    args = ["--config", str(config), "--data.dataset", str(data_dir), "--run_dir", str(run_dir)]
    return train([*args, "--trainer.max_epochs", str(epochs)])


def _free_port(preferred: int) -> int:
    """`preferred` unless something listens there (TIME_WAIT leftovers don't count), else any."""
    for candidate in (preferred, 0):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP proxy binds
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RecstackError("no free TCP port on 127.0.0.1")


def _write_serve_config(ranker: Path, retriever: Path, data_dir: Path, state: Path, port: int):
    """configs/serve_demo.yaml with absolute paths to this demo's artifacts, data and state."""
    import yaml

    document = yaml.safe_load(SERVE_CONFIG.read_text())
    document["http_options"]["port"] = port
    app = document["applications"][0]
    app["args"]["store"] = {"kind": "embedded", "path": str(state / "state.sqlite")}
    app["args"]["event_log"] = str(state / "events")
    app["args"]["seed_histories_from"] = str(data_dir.resolve())
    models = {d["name"]: d for d in app["deployments"]}["Ingress"]["user_config"]
    models["retriever"]["models"]["main"] = str(retriever.resolve())
    models["ranker"]["models"]["main"] = str(ranker.resolve())
    path = state / "serve.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _serve_and_call(ranker: Path, retriever: Path, data_dir: Path, state: Path, port: int):
    from recstack.cli.demo_calls import walkthrough
    from recstack.serving import serve_cmd
    from recstack.serving.auth import ADMIN, APP, KEY_ENV
    from recstack.serving.config import read_serve_config

    console.rule("5. serve both models with Ray Serve")
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    for old in [*state.glob("state.sqlite*"), state / "events", state / "ray"]:  # a fresh start
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink(missing_ok=True)
    config = _write_serve_config(ranker, retriever, data_dir, state, _free_port(port))
    keys = {scope: secrets.token_urlsafe(24) for scope in (APP, ADMIN)}
    os.environ.update({KEY_ENV[scope]: key for scope, key in keys.items()})
    console.print(
        f"wrote {config}; generated a local app key and admin key for this run "
        f"({KEY_ENV[APP]} / {KEY_ENV[ADMIN]} in this process's environment, not shown)"
    )
    try:
        with console.status("starting Ray and the service (about 20 s) …"):
            url = serve_cmd.start(config, temp_dir=state / "ray")
        console.print(f"recstack is serving at {url}  (OpenAPI: {url}/docs)")
        experiment = read_serve_config(config)["args"].experiment
        return walkthrough(url, keys[APP], keys[ADMIN], experiment)
    finally:
        with console.status("stopping the service …"):
            serve_cmd.stop()
        console.rule("7. the service stopped")

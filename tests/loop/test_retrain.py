"""`recstack retrain` end to end on synthetic drift (docs/architecture.md §9).

A SASRec ranker and a two-tower retriever are trained on a world where item i is followed by
item i+1, exported and served (uvicorn engine). Then the world shifts: new items n0..n19 join
the chain (i is followed by n<i mod 20>, then by i+1). `recstack retrain` extends the dataset with
the logged events, warm-starts both models, judges old and new on the holdout after the cut-off,
passes the gate and promotes; the service then recommends the new item after i. Noise events
are refused, and a retrain killed between steps resumes without repeating them.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from drift_world import N_NEW, base_log, new_next, shifted_events
from service_config import APP, MODELS_KEY, free_port, set_test_keys, user_in, write_serve_config

from recstack.cli import main
from recstack.datasets.prepare import prepare
from recstack.datasets.sources.tabular import ColumnMapping
from recstack.errors import RecstackError
from recstack.serving.model_slots import ModelSlots
from recstack.serving.model_watch import ModelWatch
from recstack.serving.ranking import Ranker
from recstack.serving.serve_cmd import wait_ready
from recstack.serving.store.embedded import EmbeddedStore

pytestmark = pytest.mark.integration

RANKER = {"history_len": 20, "dim": 32, "n_layers": 1, "n_heads": 1, "dropout": 0.1}
RETRIEVER = {"history_len": 20, "dim": 32, "n_heads": 1, "dropout": 0.1}
TASKS = {
    "ranker": ("recstack.training.tasks.next_item.NextItemTask", RANKER),
    "retriever": ("recstack.training.tasks.retrieval.RetrievalTask", RETRIEVER),
}


def train_config(root: Path, side: str, dataset: Path, epochs: int) -> Path:
    task, model = TASKS[side]
    config = {
        "seed_everything": 0,
        "run_dir": str(root / f"run-{side}"),
        "baselines": False,
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "devices": 1,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"class_path": task, "init_args": {"model": model, "optim": {"lr": 0.005}}},
        "data": {"dataset": str(dataset), "batch_size": 128},
        "early_stopping": {"patience": 100},
    }  # fmt: skip
    path = root / f"{side}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Base dataset, trained and exported models, and the train configs the loop reuses."""
    root = tmp_path_factory.mktemp("loop-world")
    log = base_log(root)
    dataset = root / "data-v1"
    prepare(f"csv:{log}", dataset, columns=ColumnMapping("user", "item", "ts"), quiet=True)
    artifacts = {"dataset": dataset}
    for side in TASKS:
        config = train_config(root, side, dataset, epochs=12)
        assert main(["train", "--config", str(config)]) == 0
        out = root / "artifacts" / side / "v1"
        ckpt = root / f"run-{side}" / "checkpoints" / "best.ckpt"
        assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
        artifacts[side] = out
    return root, artifacts


def start_service(
    root: Path, artifacts: dict, canary: bool = False
) -> tuple[subprocess.Popen, str]:
    """The uvicorn engine on the test serve config; with `canary`, a second model set
    "candidate" (the same artifacts at first) that an experiment arm sends traffic to."""
    set_test_keys()
    port = free_port()
    config = write_serve_config(root / "serve.yaml", artifacts, root / "state", port)
    if canary:
        document = yaml.safe_load(config.read_text())
        app = document["applications"][0]
        for deployment in app["deployments"][1:]:
            models = deployment["user_config"]["models"]
            models["candidate"] = models["main"]
        app["args"]["experiment"]["arms"].append(
            {"name": "canary", "kind": "model", "model": "candidate", "weight": 0.2}
        )
        config.write_text(yaml.safe_dump(document))
    command = [sys.executable, "-m", "recstack.cli", "serve", "--config", str(config),
               "--engine", "uvicorn", "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout_s=90)
    return server, url


# For tests of the loop's mechanics (resume, rollback, canary), not of what it learns: short
# warm-started training and a gate that passes any model that runs.
MECHANICS = {"tolerance": 1.0, "recall_tolerance": 1.0, "epochs": (2, 1)}


def loop_config(
    root: Path,
    world_root: Path,
    url: str,
    tolerance: float,
    recall_tolerance: float = 0.05,
    epochs: tuple[int, int] = (15, 8),
    **changes,
) -> Path:
    config = {
        "loop_dir": str(root / "loop"),
        "serve_config": str(root / "serve.yaml"),
        "service": url,
        "key_env": "LOOP_TEST_MODELS_KEY",
        "train": {
            "ranker": {"config": str(world_root / "ranker.yaml"), "max_epochs": epochs[0]},
            "retriever": {"config": str(world_root / "retriever.yaml"), "max_epochs": epochs[1]},
        },
        "gate": {"ndcg_tolerance": tolerance, "recall_tolerance": recall_tolerance,
                 "latency_budget_ms": 200, "latency_requests": 50},
        "promote": {"timeout_s": 30},
    } | changes  # fmt: skip
    path = root / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    os.environ["LOOP_TEST_MODELS_KEY"] = MODELS_KEY
    return path


def post_events(url: str, events: list[dict]) -> None:
    for start in range(0, len(events), 1000):
        reply = requests.post(
            f"{url}/v1/events",
            json={"events": events[start : start + 1000]},
            headers=APP,
            timeout=30,
        )
        assert reply.status_code == 202, reply.text
    # no wait: a 202 means the events are in the log, and retrain reads open segments too


def audit(root: Path) -> list[dict]:
    path = root / "loop" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def served(world, tmp_path):
    """The world's models served from tmp_path, and a loop config over that service."""
    world_root, artifacts = world
    server, url = start_service(tmp_path, artifacts)
    try:
        yield url, loop_config(tmp_path, world_root, url, tolerance=-0.03)  # demand a real gain
    finally:
        server.terminate()
        server.wait(timeout=30)


def served_models(url: str) -> dict:
    headers = {"Authorization": f"Bearer {MODELS_KEY}"}
    return requests.get(f"{url}/v1/admin/models", headers=headers, timeout=10).json()


def test_drift_is_learned_promoted_and_served(served, tmp_path):
    url, config = served
    post_events(url, shifted_events(users=400, per_user=20, seed=1))
    assert main(["retrain", "--config", str(config)]) == 0
    [record] = audit(tmp_path)
    assert record["decision"] == "promoted", record
    old, new = record["metrics"]["serving"], record["metrics"]["new"]
    assert new["ndcg@10"] > old["ndcg@10"] + 0.03
    assert record["data"]["counts"]["new_items"] == N_NEW
    assert served_models(url)["published"]["ranker"]["main"] == record["new"]["dirs"]["ranker"]
    hits = 0
    for item in range(3, 23):  # users whose histories point at the new item after `item`
        user = user_in("model", prefix=f"drift-{item}-")
        walk = [str(item - 2), new_next(item - 2), str(item - 1), new_next(item - 1), str(item)]
        events = [{"user_id": user, "item_id": i, "type": "view", "ts": 1_800_000_000 + n}
                  for n, i in enumerate(walk)]  # fmt: skip
        requests.post(f"{url}/v1/events", json={"events": events}, headers=APP, timeout=10)
        reply = requests.post(f"{url}/v1/recommend", json={"user_id": user, "k": 10},
                              headers=APP, timeout=10).json()  # fmt: skip
        hits += new_next(item) in {i["item_id"] for i in reply["items"]}
    assert hits >= 12, f"the new item after i was in the top 10 of {hits}/20 users"  # HR@10 0.79
    # nothing new since: a second run does nothing
    assert main(["retrain", "--config", str(config)]) == 0
    assert len(audit(tmp_path)) == 1


def test_noise_is_refused_and_the_old_model_keeps_serving(served, world, tmp_path):
    url, _ = served
    # the served config's gate demands a gain of 0.03; a few epochs on noise bring none
    config = loop_config(tmp_path, world[0], url, tolerance=-0.03, epochs=(4, 2))
    post_events(url, shifted_events(users=400, per_user=12, seed=2, noise=True))
    assert main(["retrain", "--config", str(config)]) == 0
    [record] = audit(tmp_path)
    assert record["decision"] == "refused", record
    assert any("ndcg@10" in reason for reason in record["reasons"])
    assert served_models(url)["published"]["ranker"]["main"] == str(world[1]["ranker"])
    # the same events again: judged already, nothing to do
    assert main(["retrain", "--config", str(config)]) == 0
    assert len(audit(tmp_path)) == 1


def test_a_killed_retrain_resumes_without_repeating_finished_steps(served, world, tmp_path):
    url, _ = served
    config = loop_config(tmp_path, world[0], url, **MECHANICS)
    post_events(url, shifted_events(users=400, per_user=20, seed=3))
    command = [sys.executable, "-m", "recstack.cli", "retrain", "--config", str(config)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "loop" / "runs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        states = list(runs.glob("*/state.json"))
        if states and "train_ranker" in json.loads(states[0].read_text())["steps"]:
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    [state] = list(runs.glob("*/state.json"))
    steps = json.loads(state.read_text())["steps"]
    assert "train_ranker" in steps and "decision" not in steps and audit(tmp_path) == []
    ranker_ckpt = Path(steps["train_ranker"]["checkpoint"])
    trained_at = ranker_ckpt.stat().st_mtime_ns
    assert main(["retrain", "--config", str(config)]) == 0
    [record] = audit(tmp_path)
    assert record["run"] == state.parent.name and record["decision"] == "promoted"
    assert ranker_ckpt.stat().st_mtime_ns == trained_at  # not trained again


def test_a_replica_that_refuses_the_new_models_gets_the_old_ones_back(served, world, tmp_path):
    url, _ = served
    config = loop_config(tmp_path, world[0], url, **MECHANICS)
    old_ranker = world[1]["ranker"]

    def load(path: Path) -> Ranker:  # a replica that cannot read what the loop exported
        if "loop" in path.parts:
            raise RecstackError("cannot read this artifact here")
        return Ranker.load(path)

    store = EmbeddedStore(tmp_path / "state" / "state.sqlite")
    replica = ModelWatch(store, {"ranker": ModelSlots(load)}, replica="refusing-replica")
    replica.load({"ranker": {"main": str(old_ranker)}})
    try:
        post_events(url, shifted_events(users=400, per_user=20, seed=4))
        assert main(["retrain", "--config", str(config)]) == 2  # a fault: non-zero
    finally:
        replica.stop()
    [record] = audit(tmp_path)
    assert record["decision"] == "rolled_back" and record["restored"] is True
    assert any("refusing-replica" in reason for reason in record["reasons"])
    served = served_models(url)
    assert served["published"]["ranker"]["main"] == str(old_ranker)
    serving = {r["models"]["ranker"]["main"] for r in served["replicas"] if "ranker" in r["models"]}
    assert serving == {record["serving"]["versions"]["ranker"]}


def test_models_from_another_dataset_or_a_holdout_without_events_stop_with_one_line(
    served, world, tmp_path, capsys
):
    url, _ = served
    post_events(url, shifted_events(users=400, per_user=4, seed=5))
    other = prepare_other(tmp_path)
    wrong = loop_config(tmp_path, world[0], url, -0.03, base_dataset=str(other))
    assert main(["retrain", "--config", str(wrong)]) == 2
    assert "set base_dataset" in capsys.readouterr().err
    future = loop_config(tmp_path, world[0], url, -0.03, holdout_since=2_000_000_000)
    assert main(["retrain", "--config", str(future)]) == 2
    assert "no test targets after ts 2000000000" in capsys.readouterr().err.replace("\n", " ")
    assert audit(tmp_path) == []
    assert served_models(url)["published"]["ranker"]["main"] == str(world[1]["ranker"])


def prepare_other(root: Path) -> Path:
    """A dataset the served models did not come from."""
    log = root / "other.csv"
    log.write_text("user,item,ts\n1,1,10\n1,2,20\n2,1,30\n2,3,40\n")
    out = root / "other"
    prepare(f"csv:{log}", out, columns=ColumnMapping("user", "item", "ts"), quiet=True)
    return out


def test_a_canary_takes_an_arm_first_then_is_promoted_and_rolled_back(world, tmp_path):
    world_root, artifacts = world
    server, url = start_service(tmp_path, artifacts, canary=True)
    try:
        post_events(url, shifted_events(users=400, per_user=20, seed=6))
        canary = {"timeout_s": 30, "canary_model": "candidate"}
        config = str(loop_config(tmp_path, world_root, url, **MECHANICS, promote=canary))
        assert main(["retrain", "--config", config]) == 0
        [record] = audit(tmp_path)
        assert record["decision"] == "canary", record
        published = served_models(url)["published"]["ranker"]
        assert published == {"main": str(artifacts["ranker"]),
                             "candidate": record["new"]["dirs"]["ranker"]}  # fmt: skip
        assert main(["retrain", "--config", config]) == 0  # judged already: nothing to do
        assert main(["retrain", "--config", config, "--promote-canary"]) == 0
        promoted = audit(tmp_path)[-1]
        assert promoted["decision"] == "promoted" and promoted["from_canary"] == record["run"]
        assert served_models(url)["published"]["ranker"]["main"] == record["new"]["dirs"]["ranker"]
        assert main(["retrain", "--config", config, "--rollback"]) == 0
        assert audit(tmp_path)[-1]["decision"] == "rollback"
        assert served_models(url)["published"]["ranker"]["main"] == str(artifacts["ranker"])
        assert main(["retrain", "--config", config, "--history"]) == 0
    finally:
        server.terminate()
        server.wait(timeout=30)

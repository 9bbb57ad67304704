"""One DDP run over two "nodes", each started by its own command with its own run dir and
array cache, as on separate machines (gloo on CPU). The two launches docs/scaling.md gives for
machines without a scheduler:

- `lightning-env`: on each node `MASTER_ADDR=<node 0> MASTER_PORT=<port> NODE_RANK=<n>
  recstack train ... --trainer.num_nodes 2 --trainer.devices 2 --trainer.strategy ddp`.
  Lightning's LightningEnvironment reads MASTER_ADDR, MASTER_PORT and NODE_RANK (GROUP_RANK
  as a fallback); without LOCAL_RANK it starts the node's `devices` processes itself (the
  children get LOCAL_RANK 1..); the world size is num_nodes x devices (WORLD_SIZE is set for
  the children, not read).
- `torchrun`: on each node `torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d
  --rdzv-endpoint <node 0>:<port> --no-python recstack train ... --trainer.num_nodes 2
  --trainer.devices 1` (Lightning's TorchElasticEnvironment); the rendezvous decides which
  node holds global rank 0.

Either way exactly one process (global rank 0) writes the run's files, and the logged
validation NDCG@10 is over all users, not over one rank's shard.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from train_configs import logged_and_true_val_ndcg, write_config

BIN = Path(sys.executable).parent
# Variables that would make Lightning pick another cluster environment (SLURM, torchelastic,
# MPI) or another rank layout than the one a test sets.
_LAUNCHER_VARS = ("SLURM_", "TORCHELASTIC_", "OMPI_", "PMI_", "GROUP_RANK", "RANK", "WORLD_SIZE",
                  "LOCAL_RANK", "NODE_RANK", "MASTER_")  # fmt: skip
_FILES = ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "metrics.json", "config.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: str, node_rank: int, port: int, config: Path, cache: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_VARS)}
    env.update(RECSTACK_CACHE=str(cache), OMP_NUM_THREADS="1")  # cache: a node's own disk
    devices = 2 if launcher == "lightning-env" else 1  # processes per node
    train = ["train", "--config", str(config), "--trainer.num_nodes", "2",
             "--trainer.devices", str(devices), "--trainer.strategy", "ddp"]  # fmt: skip
    if launcher == "lightning-env":
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node_rank))
        command = [str(BIN / "recstack"), *train]
    else:
        command = [str(BIN / "torchrun"), "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                   "--rdzv-id", "recstack-test", "--no-python", str(BIN / "recstack"), *train]  # fmt: skip
    return subprocess.Popen(  # a session of its own: a failed test ends the node's children too
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.mark.parametrize("launcher", ["lightning-env", "torchrun"])
def test_two_nodes_launched_separately_train_one_ddp_run(tmp_path, chain_dir, launcher):

    port = _free_port()
    nodes, outputs = [], []
    try:
        for rank in range(2):
            config = write_config(tmp_path / f"node{rank}", chain_dir, max_epochs=2)
            nodes.append(_launch(launcher, rank, port, config, tmp_path / f"node{rank}" / "cache"))
        for node in nodes:
            out, _ = node.communicate(timeout=240)
            outputs.append(out.decode(errors="replace"))
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    for rank, (node, out) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{out[-3000:]}"
    world = 4 if launcher == "lightning-env" else 2
    assert any(f"Starting with {world} processes" in out for out in outputs), outputs[0][-3000:]

    runs = [tmp_path / f"node{rank}" / "run" for rank in range(2)]
    written = [sorted(p for p in run.rglob("*") if p.is_file()) for run in runs]
    writers = [run for run, files in zip(runs, written, strict=True) if files]
    assert len(writers) == 1, written  # only global rank 0 writes
    run = writers[0]
    if launcher == "lightning-env":
        assert run == runs[0]  # NODE_RANK 0 holds global rank 0
    for name in _FILES:
        assert (run / name).is_file(), name

    logged, true = logged_and_true_val_ndcg(run / "checkpoints" / "last.ckpt", chain_dir)
    assert logged == pytest.approx(true, abs=1e-5)

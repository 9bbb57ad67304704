"""Time one SASRec training step in plain PyTorch (no Lightning, no data loading): model,
full cross-entropy and AdamW, bf16 autocast on CUDA, at several batch sizes.

    python benchmarks/step_profile.py --device cuda --out benchmarks/results/step_profile.json

Compared with train_bench's epoch time this separates the model's own cost from the
framework and data pipeline around it. Writes JSON (ms per step, tokens per second).
"""

import json
import platform
import time
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import auto_cli

from recstack.training.losses import LossConfig, RecLoss
from recstack.training.models.sasrec import SASRec, SASRecConfig


def time_steps(
    batch: int, n_items: int, history_len: int, device: torch.device, steps: int
) -> dict:
    torch.manual_seed(0)
    net = SASRec(
        SASRecConfig(n_items=n_items, history_len=history_len, dim=64, n_layers=2, n_heads=2)
    )
    net = net.to(device)
    loss_fn = RecLoss(LossConfig(kind="ce"), n_items).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    items = torch.randint(1, n_items + 1, (batch, history_len), device=device)
    targets = torch.randint(1, n_items + 1, (batch, history_len), device=device)
    cuda = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            hidden = net(items)
            loss = loss_fn(
                hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1), net.item_vectors
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    ms = (time.perf_counter() - started) / steps * 1000
    return {
        "batch": batch,
        "ms_per_step": round(ms, 2),
        "tokens_per_s": round(batch * history_len / ms * 1000),
    }


def step_profile(
    batches: str = "64,256,1024",
    n_items: int = 3700,
    history_len: int = 200,
    steps: int = 30,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    out: Path = Path("benchmarks/results/step_profile.json"),
) -> dict:
    """Args: batches: comma-separated batch sizes; n_items, history_len: the synth-1m shapes."""
    dev = torch.device(
        "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    runs = [time_steps(int(b), n_items, history_len, dev, steps) for b in batches.split(",")]
    result = {
        "benchmark": "step_profile",
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "config": {
            "n_items": n_items,
            "history_len": history_len,
            "dim": 64,
            "n_layers": 2,
            "loss": "ce",
        },
        "runs": runs,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(runs))
    return result


if __name__ == "__main__":
    auto_cli(step_profile, as_positional=False)

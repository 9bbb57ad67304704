"""configs/train/sasrec_ml100k_gpu.yaml is the CPU default at batch 512: the same model and loss,
the learning rate scaled by 2 (benchmarks/README.md, "GPU config on CPU")."""

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


def test_the_gpu_config_keeps_the_default_recipe_at_twice_the_learning_rate():
    cpu, gpu = (
        yaml.safe_load((CONFIGS / f"{n}.yaml").read_text())
        for n in ("sasrec_ml100k", "sasrec_ml100k_gpu")
    )
    cpu_args, gpu_args = cpu["model"]["init_args"], gpu["model"]["init_args"]
    assert gpu_args["model"] == cpu_args["model"] and gpu_args["loss"] == cpu_args["loss"]
    assert gpu_args["optim"]["lr"] == pytest.approx(2 * cpu_args["optim"]["lr"])
    assert gpu["data"]["batch_size"] == 8 * cpu["data"]["batch_size"]

"""`recstack train --compile true`: `torch.compile` the task's network before the first step.

`nn.Module.compile` compiles in place, so the state dict keeps its keys: checkpoints, exact
resume, warm starts and export are unchanged. On CUDA with `data.device_batches`, batches come
in four widths (training/data/device_batches.py), so the network compiles a few graphs, not
one per batch width. Whether it pays off is measured on the GPU (benchmarks/gpu_check.sh,
`train_bench.py --compile true`); it stays off unless asked for.
"""

from lightning.pytorch.callbacks import Callback


class CompileNet(Callback):
    def on_fit_start(self, trainer, pl_module) -> None:  # after setup built the network
        pl_module.net.compile()

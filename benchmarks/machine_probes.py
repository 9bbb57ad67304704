"""What the hardware allows, measured: read and copy bandwidth and the float32 GEMM peak on
the CPU (numpy and torch kernels) and on a CUDA device, and this process's RSS.

A VM's read bandwidth can switch between levels from minute to minute (benchmarks/README.md,
"Notes from measurements"), so these figures describe the start of a run; inference_retrieval
probes it again beside each exact search.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import torch
from inference_timing import best_seconds


def cpu_bandwidth(mib: int, threads: int, repeats: int = 5) -> dict:
    """Read bandwidth in GB/s over a `mib` MiB float32 array, the best of `repeats` passes of
    several kernels: numpy max and dot on `threads` slices in a thread pool (numpy releases
    the GIL in both) and torch's sum (torch's `threads` threads); copy bandwidth too."""
    a = np.ones(mib * 2**20 // 4, dtype=np.float32)  # ones: the pages are really there
    b = np.zeros_like(a)
    a_parts, b_parts = np.array_split(a, threads), np.array_split(b, threads)
    kernels = {"numpy_max": np.max, "numpy_dot": lambda part: np.dot(part, part)}
    with ThreadPoolExecutor(threads) as pool:
        read = {
            name: a.nbytes / best_seconds(lambda k=k: list(pool.map(k, a_parts)), repeats) / 1e9
            for name, k in kernels.items()
        }
        copy_s = best_seconds(lambda: list(pool.map(np.copyto, b_parts, a_parts)), repeats)
    whole = torch.from_numpy(a)
    read["torch_sum"] = a.nbytes / best_seconds(whole.sum, repeats) / 1e9
    return {
        "array_mib": mib,
        "threads": threads,
        "read_gbps": max(read.values()),
        "read_gbps_by_kernel": read,
        "copy_gbps": 2 * a.nbytes / copy_s / 1e9,  # bytes read + bytes written
    }


def cpu_gemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    """float32 GEMM peak of numpy's BLAS: 2 n^3 flops per n x n matmul, best of `repeats`."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / best_seconds(lambda: a @ a, repeats) / 1e9


def gpu_bandwidth_and_gemm(device: str, mib: int = 1024, repeats: int = 10) -> dict:
    """The same figures on a CUDA device (torch sum over `mib` MiB; fp32 GEMM, TF32 as set)."""
    x = torch.ones(mib * 2**20 // 4, device=device)

    def read() -> None:
        x.sum()
        torch.cuda.synchronize(device)

    a = torch.randn(8192, 8192, device=device)

    def gemm() -> None:
        a @ a
        torch.cuda.synchronize(device)

    read(), gemm()
    return {
        "array_mib": mib,
        "read_gbps": x.numel() * 4 / best_seconds(read, repeats) / 1e9,
        "gemm_gflops": 2 * 8192**3 / best_seconds(gemm, repeats) / 1e9,
    }


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20

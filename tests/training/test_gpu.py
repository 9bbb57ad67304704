"""CUDA: bf16-mixed training of both tasks through the Trainer, full-ranking evaluation on CUDA
against CPU, and the chunked full cross-entropy under bf16 autocast.

Marked `gpu` (deselected by default; run with `pytest -m gpu`) and skipped without CUDA.
"""

import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from recstack.training.data.datamodule import RecDataModule
from recstack.training.eval.evaluator import evaluate, make_batch
from recstack.training.losses import full_cross_entropy
from recstack.training.models.sasrec import SASRecConfig
from recstack.training.models.two_tower import TwoTowerConfig
from recstack.training.tasks.base import VAL_METRICS
from recstack.training.tasks.next_item import NextItemTask
from recstack.training.tasks.retrieval import RetrievalTask

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

TASKS = {
    "sasrec": lambda: NextItemTask(
        model=SASRecConfig(history_len=16, dim=32, n_layers=1, n_heads=2, dropout=0.0),
        optim={"lr": 0.01},
    ),
    "two_tower": lambda: RetrievalTask(
        model=TwoTowerConfig(dim=32, history_len=16, n_heads=2, dropout=0.0),
        optim={"lr": 0.01},
    ),
}


@pytest.fixture(scope="module", params=list(TASKS))
def trained(request, chain_dir, tmp_path_factory):
    """(trainer, task, datamodule) after 2 bf16-mixed epochs on CUDA."""
    seed_everything(0, verbose=False)
    task = TASKS[request.param]()
    data = RecDataModule(chain_dir, batch_size=8, cache_dir=tmp_path_factory.mktemp("arrays"))
    trainer = Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=data)
    return trainer, task, data


def test_bf16_training_on_cuda_has_finite_loss_and_logs_val_metrics(trained):
    trainer, task, _ = trained
    # fit() ends by moving the module back to the CPU; the strategy says where it trained
    assert trainer.strategy.root_device.type == "cuda" and trainer.precision == "bf16-mixed"
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss_epoch"]))
    for name in VAL_METRICS:
        assert 0.0 <= float(metrics[f"val/{name}"]) <= 1.0, name
    assert [row["epoch"] for row in task.history] == [0, 1]
    for name, param in task.named_parameters():  # mixed precision keeps float32 weights
        assert param.dtype == torch.float32 and torch.isfinite(param).all(), name


def test_full_ranking_on_cuda_matches_cpu(trained):
    _, task, data = trained
    eval_set = data.eval_set("valid")
    task.net.eval()
    results, scores = {}, {}
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32: both devices in float32
    try:
        for device in ("cpu", "cuda"):
            task.to(device)
            scorer = task.score_fn("valid")  # on CUDA it runs the net under bf16 autocast
            # scorer.fn: the same scores in float32, so both devices rank the same numbers
            results[device] = evaluate(scorer.fn, eval_set, device=device)
            with torch.inference_mode():
                scores[device] = scorer(make_batch(eval_set, 0, eval_set.n_users, task.device))
    finally:
        torch.set_float32_matmul_precision(matmul_precision)
        task.to("cuda")
    cpu, gpu = results["cpu"], results["cuda"]
    assert gpu.info["device"].startswith("cuda")
    # float32 round-off differs between the devices: at most a near-tie may swap
    assert (cpu.target_ranks != gpu.target_ranks).sum() <= 1
    assert (cpu.top_items != gpu.top_items).mean() <= 0.05
    for name in ("hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20"):
        assert gpu.metrics[name] == pytest.approx(cpu.metrics[name], abs=1.01 / eval_set.n_users)
    # the bf16 scores of validation on CUDA stay close to the float32 ones on CPU
    bf16, fp32 = scores["cuda"].cpu(), scores["cpu"]
    assert bf16.dtype == torch.float32 and bf16.shape == (eval_set.n_users, eval_set.n_items + 1)
    real = slice(1, None)  # column 0 is PAD
    scale = fp32[:, real].abs().max()
    torch.testing.assert_close(bf16[:, real], fp32[:, real], rtol=0.05, atol=0.05 * scale)


def test_chunked_full_cross_entropy_matches_plain_under_bf16_autocast():
    torch.manual_seed(0)
    n_items, dim, n = 1000, 64, 256
    table = torch.nn.Embedding(n_items + 1, dim, device="cuda")
    torch.nn.init.normal_(table.weight, std=0.25)  # logits of std ~2, as in a trained model
    query = torch.randn(n, dim, device="cuda", requires_grad=True)
    target = torch.randint(1, n_items + 1, (n,), device="cuda")

    def loss_and_grads(chunk_items: int) -> list[torch.Tensor]:
        table.zero_grad()
        query.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = full_cross_entropy(query, target, table, n_items, chunk_items, reduction="none")
        loss.mean().backward()
        return [loss.detach(), query.grad.clone(), table.weight.grad.clone()]

    plain = loss_and_grads(chunk_items=n_items)  # one [N, n_items] logits matrix
    chunked = loss_and_grads(chunk_items=96)  # 11 checkpointed chunks, the last one partial
    assert chunked[0].dtype == torch.float32 and torch.isfinite(chunked[0]).all()
    for name, a, b in zip(("loss", "query grad", "item grad"), chunked, plain, strict=True):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=0.03, atol=0.03 * float(b.abs().max()), msg=name)


def test_auto_builds_the_batches_on_the_gpu_and_they_match_the_dataloaders(trained, tmp_path):
    """device_batches auto on one GPU with a small dataset: the arrays go to the GPU once and
    every batch equals the DataLoader path's, moved to the GPU."""
    _, task, data = trained
    assert data.batches_from.startswith("built on cuda"), data.batches_from
    off = RecDataModule(data.dataset_dir, batch_size=8, cache_dir=tmp_path, device_batches="off")
    off.prepare_data()
    off.setup("fit")
    off.train_on(task.train_samples())
    loader = off.train_dataloader()
    device_loader = data.train_dataloader()
    for expected, got in zip(loader, device_loader, strict=True):
        for key, value in expected.items():
            assert got[key].is_cuda
            torch.testing.assert_close(got[key].cpu(), value, rtol=0, atol=0, msg=key)

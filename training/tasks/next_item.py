"""`NextItemTask`: SASRec trained to predict every next item of the training sequences.

Each batch holds windows of a user's TRAIN events (inputs [B, L], targets [B, L] = inputs
shifted by one); every non-PAD target position is one example, so the model at position t sees
only items 0..t (causal attention) when predicting item t + 1. The loss (full cross-entropy,
sampled softmax with logQ, or gBCE) is chosen in config.
"""

from dataclasses import asdict

import torch

from recstack.schema import PAD_IDX
from recstack.training.data.facts import DataFacts, TrainSamples
from recstack.training.losses import LossConfig
from recstack.training.models.sasrec import SASRec, SASRecConfig
from recstack.training.tasks.base import OptimConfig, RecTask, Scorer, as_config


class NextItemTask(RecTask):
    def __init__(
        self,
        model: SASRecConfig | None = None,
        loss: LossConfig | None = None,
        optim: OptimConfig | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            model: SASRec settings; n_items is taken from the dataset.
            loss: "ce" (full softmax, chunked over the catalogue), "sampled" (logQ-corrected
                sampled softmax) or "gbce".
            optim: AdamW settings.
            seed: seed of dropout and negative sampling (drawn per epoch).
        """
        super().__init__(optim, loss, seed)
        model = model if model is not None else {}
        if isinstance(model, dict) and "max_len" in model and "history_len" not in model:
            # a checkpoint saved before the history window got its one name
            model = {("history_len" if k == "max_len" else k): v for k, v in model.items()}
        self.model_config = model if isinstance(model, dict) else asdict(model)
        if self.model_config.get("n_items"):  # from a checkpoint: build now, weights follow
            self._build_net()
        self.save_hyperparameters(
            {
                "model": self.model_config,
                "loss": asdict(self.loss_config),
                "optim": asdict(self.optim),
                "seed": seed,
            }
        )

    def _build_net(self) -> None:
        self.net = SASRec(as_config(SASRecConfig, self.model_config))
        self.attach_ema()

    def build_from_data(self, facts: DataFacts) -> None:
        self.model_config["n_items"] = facts.n_items
        self._build_net()
        self.hparams["model"] = self.model_config

    def train_samples(self) -> TrainSamples:
        return TrainSamples("windows", as_config(SASRecConfig, self.model_config).history_len)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hidden = self.net(batch["items"]) / self.net.config.temperature  # [B, L, d]
        targets = batch["targets"]  # [B, L]
        if hidden.device.type == "cuda":  # fixed shapes: no host sync to count PAD positions
            loss = self.loss_fn.masked(
                hidden.flatten(0, 1), targets.flatten(), self.net.item_vectors
            )
        else:  # on CPU, leaving PAD positions out saves their share of the compute
            keep = targets != PAD_IDX
            loss = self.loss_fn(hidden[keep], targets[keep], self.net.item_vectors)
        self.log_train_loss(loss, targets.shape[0])  # windows: no GPU sync for a count
        return loss

    def score_fn(self, target: str, tie_orders: int = 1) -> Scorer:
        net = self.scoring_net
        history_len = net.config.history_len
        score = lambda batch: net.score_all(*batch.recent(history_len))  # noqa: E731
        return Scorer(score, self.device, tie_orders, self.seed)

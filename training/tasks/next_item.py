"""`NextItemTask`: SASRec trained to predict every next item of the training sequences.

Each batch holds windows of a user's TRAIN events (inputs [B, L], targets [B, L] = inputs
shifted by one); every non-PAD target position is one example, so the model at position t sees
only items 0..t (causal attention) when predicting item t + 1. The loss (full cross-entropy,
sampled softmax with logQ, or gBCE) is chosen in config.
"""

from dataclasses import asdict

import torch

from recstack.errors import RecstackError
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
        if as_config(SASRecConfig, self.model_config).followers and self.loss_config.kind != "ce":
            raise RecstackError(
                "sasrec followers (the transition term) trains with loss kind 'ce', not "
                f"{self.loss_config.kind!r}; set model.followers: 0 or loss.kind: ce"
            )
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

    def _build_net(self, facts: DataFacts | None = None) -> None:
        config = as_config(SASRecConfig, self.model_config)
        self.net = SASRec(config)
        if config.followers and facts is not None:  # from a checkpoint, its state has the table
            self.net.set_followers(*map(torch.from_numpy, facts.followers(config.followers)))
        self.attach_ema()  # after the table: the averaged copy takes the buffers as they are

    def build_from_data(self, facts: DataFacts) -> None:
        self.model_config["n_items"] = facts.n_items
        self._build_net(facts)
        self.hparams["model"] = self.model_config

    def train_samples(self) -> TrainSamples:
        return TrainSamples("windows", as_config(SASRecConfig, self.model_config).history_len)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        items, targets = batch["items"], batch["targets"]  # [B, L] each
        hidden = self.net(items) / self.net.config.temperature  # [B, L, d]
        if hidden.device.type == "cuda":  # fixed shapes: no host sync to count PAD positions
            hidden, items, targets = hidden.flatten(0, 1), items.flatten(), targets.flatten()
            loss_of = self.loss_fn.masked
        else:  # on CPU, leaving PAD positions out saves their share of the compute
            keep = targets != PAD_IDX
            hidden, items, targets = hidden[keep], items[keep], targets[keep]
            loss_of = lambda q, t, v, bonus=None: self.loss_fn(q, t, v, bonus=bonus)  # noqa: E731
        loss = loss_of(hidden, targets, self.net.item_vectors)
        self.log_train_loss(loss, targets.shape[0])  # windows: no GPU sync for a count
        if self.net.config.followers:
            loss = loss + self._transition_loss(loss_of, hidden, items, targets)
        return loss

    def _transition_loss(self, loss_of, hidden, items, targets) -> torch.Tensor:
        """The loss the transition term's gate learns from: the network's logits, held fixed,
        plus the bonus of each position's input item (the last one seen), with the target's
        own occurrence counted out. The network trains exactly as without the term: trained
        through the bonus too, it leaned on the memorised transitions and learnt less
        (Beauty, seed 0: validation NDCG@10 0.0638 against 0.0666 without the term)."""
        state = hidden.detach()
        bonus = self.net.transition_bonus(state, items, exclude=targets)
        return loss_of(state, targets, lambda i: self.net.item_vectors(i).detach(), bonus)

    def score_fn(self, target: str, tie_orders: int = 1) -> Scorer:
        net = self.scoring_net
        history_len = net.config.history_len
        score = lambda batch: net.score_all(*batch.recent(history_len))  # noqa: E731
        return Scorer(score, self.device, tie_orders, self.seed)

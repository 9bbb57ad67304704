"""`RetrievalTask`: a two-tower model trained to retrieve the next item of each training event.

A sample is one TRAIN event: the user tower reads the up to history_len events strictly before
it, the event's context (hour, weekday, device ...) and the user's attributes; the item tower
embeds the event's item and its features. The loss contrasts the target with the catalogue
(full cross-entropy) or with sampled negatives (logQ-corrected, in-batch / uniform / mixed).
At evaluation the context is that of the user's first target event (the request's context in
serving: its time and device), never anything learned from the target itself.
"""

from dataclasses import asdict

import torch

from recstack.training.data.facts import DataFacts, TrainSamples
from recstack.training.losses import LossConfig
from recstack.training.models.two_tower import FeatureSizes, TwoTower, TwoTowerConfig
from recstack.training.tasks.base import OptimConfig, RecTask, Scorer, as_config


class RetrievalTask(RecTask):
    def __init__(
        self,
        model: TwoTowerConfig | None = None,
        loss: LossConfig | None = None,
        optim: OptimConfig | None = None,
        seed: int = 0,
        sizes: dict | None = None,
        vocab: dict | None = None,
    ) -> None:
        """
        Args:
            model: two-tower settings.
            loss: "ce" (full softmax over the catalogue), "sampled" (logQ-corrected) or "gbce".
            optim: AdamW settings.
            seed: seed of dropout and negative sampling (drawn per epoch).
            sizes: feature cardinalities; filled in from the dataset (leave unset).
            vocab: feature vocabularies; filled in from the dataset (leave unset).
        """
        super().__init__(optim, loss, seed)
        self.model_config = as_config(TwoTowerConfig, model or TwoTowerConfig())
        self.sizes = sizes
        self.vocab = vocab
        if sizes:  # from a checkpoint: build now, weights and item features follow
            self.net = TwoTower(self.model_config, FeatureSizes(**sizes))
            self.attach_ema()
        self.save_hyperparameters(
            {
                "model": asdict(self.model_config),
                "loss": asdict(self.loss_config),
                "optim": asdict(self.optim),
                "seed": seed,
                "sizes": sizes,
                "vocab": vocab,
            }
        )

    def build_from_data(self, facts: DataFacts) -> None:
        self.sizes = asdict(facts.vocab.sizes(facts.n_items))
        self.vocab = facts.vocab.to_dict()
        self.net = TwoTower(self.model_config, FeatureSizes(**self.sizes))
        self.net.set_item_features(
            torch.from_numpy(facts.item_tags), torch.from_numpy(facts.item_cats)
        )
        self.attach_ema()  # after the item features: the average copies them
        self.hparams["sizes"], self.hparams["vocab"] = self.sizes, self.vocab

    def train_samples(self) -> TrainSamples:
        return TrainSamples("events", self.model_config.history_len)

    def _fields(self, codes: torch.Tensor, names) -> dict[str, torch.Tensor]:
        return {name: codes[:, i] for i, name in enumerate(names)}

    def user_vectors(self, history, lengths, context, user, net=None) -> torch.Tensor:
        """Codes as [B, C] / [B, U] matrices in the order of `sizes` -> [B, dim]."""
        return (net or self.net).user_vectors(
            history,
            lengths,
            self._fields(context, self.sizes["context"]),
            self._fields(user, self.sizes["user"]),
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        user = self.user_vectors(
            batch["history"], batch["lengths"], batch["context"], batch["user"]
        )
        query = user / self.model_config.temperature
        loss = self.loss_fn(query, batch["targets"], self.net.item_vectors)
        self.log_train_loss(loss, batch["targets"].shape[0])
        return loss

    def score_fn(self, target: str, tie_orders: int = 1) -> Scorer:
        context = torch.from_numpy(self.facts.eval_context(target)).to(self.device)
        user_codes = torch.from_numpy(self.facts.user_codes).to(self.device)
        history_len = self.model_config.history_len
        net = self.scoring_net

        def score(batch) -> torch.Tensor:
            history, lengths = batch.recent(history_len)
            users = batch.users
            vectors = self.user_vectors(history, lengths, context[users], user_codes[users], net)
            return net.logits(vectors, net.all_item_vectors())

        return Scorer(score, self.device, tie_orders, self.seed)

"""recstack.training: models, training tasks and the full-ranking evaluator."""

"""recstack: interaction log -> tuned recommender -> ONNX -> HTTP API.

`recstack/` is deliberately thin: the CLI entry point and the contracts every stage shares
(column names, manifests, user-facing errors). The stages live in the sub-packages
`recstack.datasets`, `recstack.training` and `recstack.serving`.
"""

__version__ = "0.1.0"

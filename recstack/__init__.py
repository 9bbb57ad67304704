"""recstack: interaction log -> tuned recommender -> ONNX -> HTTP API.

`recstack/` is deliberately thin: the contracts every stage shares (column names, manifests,
the dataset and artifact dirs, user-facing errors), and imports no stage. The stages live in
the sub-packages `recstack.datasets`, `recstack.training` and `recstack.serving`; the face
that runs them, the `recstack` command and `recstack demo`, in `recstack.cli`.
"""

__version__ = "0.1.0"

"""Export trained models to ONNX artifact dirs, serving's only input (docs/architecture.md §7)."""

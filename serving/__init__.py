"""recstack.serving: Ray Serve application over exported ONNX artifacts (no torch here)."""

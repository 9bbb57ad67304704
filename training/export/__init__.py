"""Export trained models to ONNX artifact dirs (the only contract with serving, DESIGN §3/§6)."""

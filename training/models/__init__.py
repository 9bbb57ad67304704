"""Pure nn.Module architectures (DESIGN §5): one file per model, each with a config dataclass."""

"""nn.Module architectures, one file per model with a config dataclass (docs/architecture.md §6)."""

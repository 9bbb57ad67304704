"""Full-ranking evaluation and baselines (docs/architecture.md §5)."""

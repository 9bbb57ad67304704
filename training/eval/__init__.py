"""Full-ranking evaluation and baselines (DESIGN §4)."""

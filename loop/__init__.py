"""The retrain loop: events -> new dataset version -> train -> judge -> gate -> promote (docs/architecture.md §9)."""

"""The retrain loop: events -> new dataset version -> train -> judge -> gate -> promote; and
`recstack monitor`, the drift of the traffic that can trigger it (docs/architecture.md §9)."""

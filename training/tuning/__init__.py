"""Hyper-parameter search with Optuna over `recstack train` configs (see `tune_cli`)."""

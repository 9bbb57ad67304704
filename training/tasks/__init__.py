"""LightningModules, one per task: next-item (SASRec) and retrieval (two-tower)."""

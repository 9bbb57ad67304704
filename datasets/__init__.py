"""recstack.datasets: raw logs -> prepared Arrow/Parquet dataset dirs (docs/architecture.md §3)."""

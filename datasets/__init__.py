"""recstack.datasets: raw logs -> prepared Arrow/Parquet dataset dirs (DESIGN §3)."""

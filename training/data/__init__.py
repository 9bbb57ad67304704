"""Training data over a prepared dataset: event arrays, features, batches, the DataModule."""

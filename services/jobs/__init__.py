"""Admin batch jobs: rows with progress, result and error, run on the batch queue."""

"""Data: the ten categories, training datasets and manifests, synthetic SEM-like images."""

"""The core of semtag, grouped by domain. Nothing here imports FastAPI, Celery or models/.

- ``images``: ingest (blob + row), probing and decoding, model-input preprocessing, the per-image
  pipeline (scale step, batched classification, reconciler), queries and search
- ``scale``: reading the scale from metadata and from the data bar (OCR)
- ``classify``: the ONNX inference engine, the model registry (which model is active), evaluation
- ``clustering``: intrinsic dimension, autoencoder, hierarchical clusterings, subcategories
- ``curation``: human labels and the review queue
- ``jobs``: admin batch jobs (rows, progress, cancellation; kinds are registered at start-up)
- ``access``: API keys and roles, the signed ingest webhook
- ``data``: the ten categories, datasets and manifests, synthetic SEM-like images

Each domain keeps its contracts in ``schemas.py`` (pydantic models the doors declare) and raises
:mod:`services.errors` classes that carry their HTTP status and code. Shared infrastructure sits
at this level: ``db``, ``tables``, ``migrate``, ``storage``, ``runtime``, ``plotting``, ``errors``.
"""

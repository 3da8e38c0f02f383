"""The core of semtag: storage, decoding, scale reading, inference, datasets, clustering.

Nothing in this package imports FastAPI or Celery; each module can be used from the CLI.
"""

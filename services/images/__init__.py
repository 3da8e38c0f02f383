"""Images: ingest (blob + row), probing and decoding, model-input preprocessing, the per-image pipeline, queries."""

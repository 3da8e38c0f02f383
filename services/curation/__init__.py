"""Curation: human labels and the review queue."""

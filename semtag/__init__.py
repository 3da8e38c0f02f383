"""semtag: metadata for SEM images (scale, category, subcategory)."""

__version__ = "0.1.0"

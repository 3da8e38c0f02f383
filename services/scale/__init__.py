"""Scale and acquisition data of SEM images: instrument metadata first, OCR of the data bar next."""

from services.scale.reader import ScaleResult, read_scale

__all__ = ["ScaleResult", "read_scale"]

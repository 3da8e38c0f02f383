"""What a scale reading's confidence means: a probability, fitted on labelled readings.

The OCR path scores a reading from the checks it could make (magnification, printed field
width, round value, Tesseract's own confidence, how the label was read): :func:`calibrate`
maps that raw score to the share of readings with the same score that were right (label
value and unit exact, and the pixel size within 2% where it is known), one map per way the
reading was made (the data bar at the bottom, a panel elsewhere in the frame, a bar drawn over
the image: the same score means different things on each). Each map is an isotonic fit
(scikit-learn's ``IsotonicRegression``, run by ``bench/scale_calibrate.py``) kept here as a
small table of (raw score, probability) points and interpolated between them, so serving
needs no fitting library.

``CONFIDENT`` is the documented meaning of "confident": the lowest calibrated confidence at
which, on the held-out readings, at least 99% of the readings at or above it were right.

Readings from instrument metadata do not go through the table: their pixel size is the
instrument's own (checked against the field width where the file has one). Their confidence is
set by rule (``METADATA_*``): high when the data bar agrees or cannot be read, lower when it
disagrees (the label may then come from a bar that was measured wrongly).
"""

from __future__ import annotations

import numpy as np

# ---- fitted by bench/scale_calibrate.py (do not edit by hand) -------------------------------
FIT = {"fitted": True, "readings": 979, "two_fold": 920, "ece_raw": 0.119, "ece": 0.034}
TABLES: dict[str, list[tuple[float, float]]] = {
    'data bar': [
        (0.0, 0.0),
        (0.4, 0.8108),
        (0.55, 0.8108),
        (0.65, 0.9111),
        (0.75, 0.9111),
        (0.85, 0.975),
        (0.95, 0.9888),
    ],
    'panel': [
        (0.0, 0.0),
        (0.2, 0.25),
        (0.3, 0.25),
        (0.35, 0.3333),
        (0.4, 0.6667),
        (0.55, 0.6667),
        (0.65, 0.7143),
        (0.75, 0.9375),
        (0.85, 0.9859),
        (0.95, 0.99),
    ],
    'overlay': [
        (0.0, 0.25),
        (0.1, 0.25),
        (0.2, 0.3077),
        (0.3, 0.3077),
        (0.35, 0.3333),
        (0.4, 0.5455),
        (0.45, 0.5455),
        (0.5, 0.6667),
        (0.55, 0.7755),
        (0.65, 0.7755),
        (0.7, 0.9027),
        (0.75, 0.9027),
        (0.8, 0.9535),
        (0.85, 0.9781),
        (0.99, 0.9781),
    ],
}
CONFIDENT = 0.985
LABEL_FROM_BAR = 0.758  # share of bars measured right (±2%) when their label was misread or not read
# ---- end of fitted values -------------------------------------------------------------------

BANDS = (0.0, 0.5, 0.7, 0.9, CONFIDENT)  # lower edges of the confidence bands the benchmarks report

METADATA_AGREES = 0.99  # metadata pixel size; the data bar agrees with it, or has no readable label
METADATA_LABEL_DISAGREES = 0.9  # the label from the metadata itself while the data bar disagrees
# A label derived from the measured bar × the metadata pixel size is only as good as the bar's
# measurement: LABEL_FROM_BAR (fitted), never more than METADATA_LABEL_DISAGREES.


def calibrate(raw: float, path: str | None = None) -> float:
    """The probability that an OCR reading with raw score ``raw`` is right, from the table of the
    way it was read (``path``: 'data bar', 'panel' or 'overlay'; the data bar's table otherwise)."""
    table = TABLES.get(path or "data bar") or TABLES["data bar"]
    xs = np.array([p[0] for p in table])
    ys = np.array([p[1] for p in table])
    return float(np.clip(np.interp(float(raw), xs, ys), 0.0, 0.99))

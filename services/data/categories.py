"""The ten SEM categories of the NFFA-EUROPE dataset, in the paper's (dataset) order."""

from __future__ import annotations

import re

from services.errors import BadInput

CATEGORIES: list[tuple[str, str]] = [
    ("porous_sponges", "Porous sponges"),
    ("patterned_surfaces", "Patterned surfaces"),
    ("particles", "Particles"),
    ("films_coated_surfaces", "Films and coated surfaces"),
    ("powders", "Powders"),
    ("tips", "Tips"),
    ("nanowires", "Nanowires"),
    ("biological", "Biological"),
    ("mems_devices_electrodes", "MEMS devices and electrodes"),
    ("fibres", "Fibres"),
]
SLUGS = [slug for slug, _ in CATEGORIES]
NAMES = dict(CATEGORIES)


def _norm(text: str) -> str:
    text = re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()
    text = re.sub(r"\b(and|the)\b", " ", text)
    words = [w[:-1] if w.endswith("s") and len(w) > 3 else w for w in text.split()]
    return " ".join(words).replace("fiber", "fibre")


_ALIASES: dict[str, str] = {}
for _slug, _name in CATEGORIES:
    _ALIASES[_norm(_slug)] = _slug
    _ALIASES[_norm(_name)] = _slug
# Folder names of the public dataset and common variants.
for _alias, _slug in {
    "Porous_Sponge": "porous_sponges", "Patterned_surface": "patterned_surfaces",
    "Films_Coated_Surface": "films_coated_surfaces", "MEMS_devices_and_electrodes": "mems_devices_electrodes",
    "MEMS": "mems_devices_electrodes", "Powder": "powders", "Tips": "tips", "Fibres": "fibres", "Fibers": "fibres",
    "Nanowires": "nanowires", "Biological": "biological", "Particles": "particles", "Films": "films_coated_surfaces",
}.items():
    _ALIASES[_norm(_alias)] = _slug


def to_slug(value: str | int) -> str:
    """Category slug from a slug, display name, dataset folder name or index 0–9."""
    if isinstance(value, bool):
        raise BadInput("category must be a name, a slug or an index 0–9, not true/false", "unknown_category")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isascii() and value.strip().isdigit()):
        idx = int(value)
        if 0 <= idx < len(SLUGS):
            return SLUGS[idx]
        raise BadInput(f"category index {idx} is outside 0–9", "unknown_category")
    slug = _ALIASES.get(_norm(value))
    if slug is None:
        raise BadInput(f"unknown category {value!r}; use one of: {', '.join(SLUGS)}", "unknown_category")
    return slug


def index_of(slug: str) -> int:
    return SLUGS.index(slug)

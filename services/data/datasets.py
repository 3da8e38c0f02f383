"""Labelled image sets for training: folder layout or human labels, deduplicated, split, manifested.

* :func:`scan_folder` reads the NFFA-EUROPE layout (one folder per category; the dataset's own
  folder names such as ``Porous_Sponge`` are accepted) and :func:`labelled_from_db` the
  curators' labels stored in the database.
* :func:`build_manifest` removes exact duplicates (sha256), groups near duplicates by a 64-bit
  difference hash (Hamming distance ≤ ``near_bits``), and splits train/validation/test
  stratified by category while keeping every group on one side.
* The manifest is JSON; its hash (over the items and classes only) names the data a run used.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from services.data.categories import SLUGS, index_of, to_slug
from services.errors import BadInput, BadParams
from services.images.imaging import ImageRejected, load_gray
from services.images.preprocess import DEFAULT_MAX_PIXELS, crop_databar

IMAGE_EXTS = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"}
SPLITS = ("train", "val", "test")


@dataclass
class Item:
    path: str            # absolute path, or relative to the manifest's root
    label: int
    sha256: str = ""
    dhash: str = ""
    group: int = -1
    split: str = ""
    image_id: int | None = None


@dataclass
class Manifest:
    root: str
    classes: list[str]
    items: list[Item]
    params: dict = field(default_factory=dict)
    duplicates: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)

    def split(self, name: str) -> list[Item]:
        return [i for i in self.items if i.split == name]

    def resolve(self, item: Item) -> Path:
        p = Path(item.path)
        return p if p.is_absolute() else Path(self.root) / p

    @property
    def sha256(self) -> str:
        body = json.dumps({"classes": self.classes, "items": [asdict(i) for i in self.items]}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
        for i in self.items:
            c = self.classes[i.label]
            out[i.split][c] = out[i.split].get(c, 0) + 1
        return out

    def save(self, path: Path | str) -> str:
        data = {"version": 1, "root": self.root, "classes": self.classes, "params": self.params,
                "sha256": self.sha256, "counts": self.counts(), "duplicates": self.duplicates,
                "rejected": self.rejected, "items": [asdict(i) for i in self.items]}
        Path(path).write_text(json.dumps(data, indent=1), encoding="utf-8")
        return self.sha256

    @classmethod
    def load(cls, path: Path | str) -> Manifest:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(data["root"], data["classes"], [Item(**i) for i in data["items"]], data.get("params", {}),
                       data.get("duplicates", []), data.get("rejected", []))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"{path} is not a semtag dataset manifest: {exc}", "bad_manifest") from exc


def scan_folder(root: Path | str) -> list[Item]:
    """Items of a one-folder-per-category tree; unknown folder names are a clear error."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"dataset folder {root} does not exist", "not_found")
    items: list[Item] = []
    unknown = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            label = index_of(to_slug(sub.name))
        except BadInput:
            unknown.append(sub.name)
            continue
        for f in sorted(sub.rglob("*")):
            if f.suffix.lower() in IMAGE_EXTS and f.is_file():
                items.append(Item(str(f.relative_to(root)), label))
    if unknown:
        raise BadInput(f"{root}: folder(s) {', '.join(unknown)} are not categories; expected one folder per "
                       f"category ({', '.join(SLUGS)} or the dataset's names)", "unknown_category")
    if not items:
        raise BadInput(f"{root} holds no images in category folders", "empty_dataset")
    return items


def labelled_from_db(session, store) -> list[Item]:  # noqa: ANN001
    """The latest human label of every labelled image, as items with absolute paths of local copies
    (the blobs themselves in a local store; for S3, files kept under the store's root)."""
    from sqlalchemy import func, select

    from services.tables import HumanLabel, Image

    latest = select(HumanLabel.image_id, func.max(HumanLabel.id).label("lid")).group_by(HumanLabel.image_id).subquery()
    rows = session.execute(
        select(Image.id, Image.storage_key, HumanLabel.category)
        .join(latest, latest.c.image_id == Image.id).join(HumanLabel, HumanLabel.id == latest.c.lid)
        .order_by(Image.id)
    ).all()
    return [Item(str(store.local_copy(key)), index_of(cat), image_id=iid) for iid, key, cat in rows]


def dhash(gray: np.ndarray) -> int:
    """64-bit difference hash of the image above its data bar."""
    small = cv2.resize(crop_databar(gray), (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def _near_groups(hashes: list[int], max_bits: int) -> list[int]:
    """Union-find over pairs within ``max_bits`` Hamming distance (band index: exact on one of max_bits+1 bands)."""
    n = len(hashes)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    bands = max_bits + 1
    width = 64 // bands
    for b in range(bands):
        shift = b * width
        mask = (1 << (width if b < bands - 1 else 64 - shift)) - 1
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(hashes):
            buckets[(h >> shift) & mask].append(i)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    i, j = members[x], members[y]
                    if bin(hashes[i] ^ hashes[j]).count("1") <= max_bits:
                        ri, rj = find(i), find(j)
                        if ri != rj:
                            parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]


def assign_splits(items: list[Item], fractions: tuple[float, float, float], seed: int) -> None:
    """Stratified, group-aware split: whole groups go where their majority class is most lacking."""
    by_group: dict[int, list[Item]] = defaultdict(list)
    for it in items:
        by_group[it.group].append(it)
    totals = Counter(it.label for it in items)
    target = {s: {c: f * totals[c] for c in totals} for s, f in zip(SPLITS, fractions)}
    have: dict[str, Counter[int]] = {s: Counter() for s in SPLITS}
    groups = list(by_group.values())
    random.Random(seed).shuffle(groups)
    groups.sort(key=len, reverse=True)  # big groups first, while every split still has room
    for members in groups:
        label = Counter(m.label for m in members).most_common(1)[0][0]
        best = max(SPLITS, key=lambda s: ((target[s][label] - have[s][label]) / max(target[s][label], 1e-9),
                                          s == "train"))
        for m in members:
            m.split = best
            have[best][m.label] += 1


def build_manifest(items: list[Item], root: Path | str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                   seed: int = 0, near_bits: int = 4, max_pixels: int = DEFAULT_MAX_PIXELS,
                   progress=None) -> Manifest:  # noqa: ANN001
    """Hash, deduplicate, group and split ``items``; unreadable files are listed, not fatal."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise BadParams("split fractions must be three non-negative numbers summing to 1")
    if not 0 <= near_bits <= 16:
        raise BadParams("near_bits must be from 0 to 16")
    root = str(Path(root).resolve())
    m = Manifest(root, list(SLUGS), [], {"fractions": list(fractions), "seed": seed, "near_bits": near_bits})
    seen: dict[str, Item] = {}
    for n, it in enumerate(items):
        path = Path(it.path) if Path(it.path).is_absolute() else Path(root) / it.path
        try:
            data = path.read_bytes()
            gray = load_gray(path, max_pixels)
        except (OSError, ImageRejected) as exc:
            m.rejected.append({"path": it.path, "reason": getattr(exc, "message", str(exc))})
            continue
        it.sha256 = hashlib.sha256(data).hexdigest()
        if it.sha256 in seen:
            first = seen[it.sha256]
            m.duplicates.append({"path": it.path, "same_as": first.path,
                                 "conflicting_label": it.label != first.label})
            continue
        seen[it.sha256] = it
        it.dhash = f"{dhash(gray):016x}"
        m.items.append(it)
        if progress is not None:
            progress(n + 1, len(items))
    if not m.items:
        raise BadInput("no readable images in the dataset", "empty_dataset")
    groups = _near_groups([int(i.dhash, 16) for i in m.items], near_bits)
    for it, g in zip(m.items, groups):
        it.group = g
    assign_splits(m.items, fractions, seed)
    return m


def load_manifest_or_scan(data: Path | str, seed: int = 0, **kw) -> Manifest:  # noqa: ANN003
    """A manifest file as is, or a dataset folder scanned and split."""
    p = Path(data)
    if p.is_file():
        return Manifest.load(p)
    items = scan_folder(p)
    return build_manifest(items, p, seed=seed, **kw)

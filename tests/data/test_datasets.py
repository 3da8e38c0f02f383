"""Synthetic data, the dataset loader (dedup, near-duplicate groups, split, manifest), evaluation maths."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from semtag.cli import main
from services.classify import evaluation
from services.data import datasets, synth
from services.data.categories import SLUGS
from services.errors import BadInput
from services.images.preprocess import Preprocessing, crop_databar, prepare_gray
from services.scale.units import to_nm


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth.write_dataset(out, per_class=6, width=192, height=160, seed=7)
    return out


def test_synth_writes_ten_dataset_folders_and_truthful_manifest(synth_dir: Path) -> None:
    rows = list(csv.DictReader(open(synth_dir / "MANIFEST.tsv", encoding="utf-8"), delimiter="\t"))
    assert len(rows) == 60
    assert sorted({r["category"] for r in rows}) == sorted(SLUGS)
    assert {p.name for p in synth_dir.iterdir() if p.is_dir()} == set(synth.FOLDERS)
    for r in rows[:10]:
        img = cv2.imread(str(synth_dir / r["file"]), cv2.IMREAD_GRAYSCALE)
        assert img.shape == (160, 192)
        # the pixel size is the label's length over the bar's pixels
        assert float(r["pixel_size_nm"]) == pytest.approx(to_nm(float(r["scale_value"]), r["scale_unit"]) /
                                                          float(r["bar_px"]))


def test_synth_is_reproducible_and_classes_differ() -> None:
    a, _ = synth.make_image(3, 192, 160, seed=11)
    b, _ = synth.make_image(3, 192, 160, seed=11)
    c, _ = synth.make_image(6, 192, 160, seed=11)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_synth_cli_and_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["synth", "--out", str(tmp_path / "s"), "--per-class", "1", "--size", "160x128"]) == 0
    assert len(list((tmp_path / "s").rglob("*.png"))) == 10
    assert main(["synth", "--out", str(tmp_path / "t"), "--per-class", "1", "--size", "big"]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "u"), "--per-class", "1", "--size", "20x20"]) == 2


def test_databar_is_cut_before_the_model_sees_it() -> None:
    img, info = synth.make_image(2, 256, 200, seed=3)
    top = crop_databar(img)
    assert top.shape[0] < img.shape[0] and top.shape[0] >= 200 - max(36, int(0.11 * 256)) - 2
    x = prepare_gray(img, Preprocessing(input_size=75))
    assert x.shape == (75, 75, 3) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0


def _copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_manifest_dedups_groups_near_duplicates_and_splits(synth_dir: Path, tmp_path: Path) -> None:
    root = _copy_tree(synth_dir, tmp_path / "data")
    # an exact duplicate under another name, and a near duplicate (re-encoded, slightly brighter)
    src = root / "Particles" / "synth_2_00000.png"
    shutil.copy(src, root / "Particles" / "copy.png")
    img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(root / "Particles" / "near.jpg"), cv2.add(img, 3), [cv2.IMWRITE_JPEG_QUALITY, 90])
    (root / "Particles" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    m = datasets.build_manifest(datasets.scan_folder(root), root, seed=1)
    assert len(m.duplicates) == 1
    assert {Path(m.duplicates[0]["path"]).name, Path(m.duplicates[0]["same_as"]).name} == {"copy.png",
                                                                                         "synth_2_00000.png"}
    assert [r["path"] for r in m.rejected] == ["Particles/broken.png"]
    by_path = {Path(i.path).name: i for i in m.items}
    kept = by_path.get("synth_2_00000.png") or by_path["copy.png"]
    assert by_path["near.jpg"].group == kept.group
    assert by_path["near.jpg"].split == kept.split
    counts = m.counts()
    assert sum(sum(c.values()) for c in counts.values()) == 61
    for slug in SLUGS:  # stratified: every category in train, and in validation and test
        assert counts["train"][slug] >= 4 and counts["val"].get(slug, 0) >= 1 and counts["test"].get(slug, 0) >= 0
    # reproducible: the same data and seed give the same manifest hash; saving and loading keeps it
    m2 = datasets.build_manifest(datasets.scan_folder(root), root, seed=1)
    assert m2.sha256 == m.sha256
    m.save(tmp_path / "manifest.json")
    assert datasets.Manifest.load(tmp_path / "manifest.json").sha256 == m.sha256


def test_loader_accepts_dataset_folder_names_and_rejects_others(tmp_path: Path) -> None:
    for name in ("Porous_Sponge", "Patterned_surface", "Films_Coated_Surface", "MEMS_devices_and_electrodes"):
        (tmp_path / "ok" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "ok" / name / "a.png"), np.zeros((8, 8), np.uint8))
    labels = sorted(i.label for i in datasets.scan_folder(tmp_path / "ok"))
    assert labels == [0, 1, 3, 8]
    (tmp_path / "ok" / "Holiday_photos").mkdir()
    with pytest.raises(BadInput, match="Holiday_photos"):
        datasets.scan_folder(tmp_path / "ok")
    with pytest.raises(BadInput, match="does not exist"):
        datasets.scan_folder(tmp_path / "missing")
    (tmp_path / "empty" / "Tips").mkdir(parents=True)
    with pytest.raises(BadInput, match="no images"):
        datasets.scan_folder(tmp_path / "empty")


def test_group_aware_split_never_splits_a_group() -> None:
    items = [datasets.Item(f"{i}.png", i % 10, group=i // 3) for i in range(300)]
    datasets.assign_splits(items, (0.8, 0.1, 0.1), seed=0)
    for g in range(100):
        assert len({it.split for it in items if it.group == g}) == 1
    share = {s: sum(it.split == s for it in items) / 300 for s in datasets.SPLITS}
    assert share["train"] == pytest.approx(0.8, abs=0.05) and share["test"] == pytest.approx(0.1, abs=0.05)


def test_temperature_scaling_and_ece() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 10))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(10, p=row) for row in p])  # calibrated at T = 1 by construction
    overconfident = logits * 4.0  # so the right temperature here is 4
    t = evaluation.fit_temperature(overconfident, labels)
    assert t == pytest.approx(4.0, rel=0.1)
    before = evaluation.classification_report(overconfident, labels, list(SLUGS))
    after = evaluation.classification_report(overconfident, labels, list(SLUGS), temperature=t)
    assert after["ece"] < before["ece"] / 2 and after["accuracy"] == before["accuracy"]
    assert np.array(before["confusion_matrix"]).sum() == 4000
    perfect = evaluation.classification_report(np.eye(10)[labels] * 5, labels, list(SLUGS))
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    with pytest.raises(ValueError, match="NaN"):
        evaluation.fit_temperature(np.full((3, 10), np.nan), np.zeros(3, int))


def test_model_inputs_are_decoded_at_reduced_scale(tmp_path: Path) -> None:
    from services.images.imaging import load_gray
    from services.images.preprocess import prepare

    img, _ = synth.make_image(6, 1024, 768, seed=4)
    cv2.imwrite(str(tmp_path / "a.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(tmp_path / "a.png"), img)
    assert load_gray(tmp_path / "a.jpg", 10**9).shape == (768, 1024)  # scale reading: full resolution
    assert load_gray(tmp_path / "a.jpg", 10**9, min_side=299).shape == (384, 512)  # still ≥ 299 both ways
    assert load_gray(tmp_path / "a.png", 10**9, min_side=299).shape == (384, 512)  # PNG: decoded, then reduced
    assert load_gray(tmp_path / "a.png", 10**9).shape == (768, 1024)
    pp = Preprocessing(input_size=299)
    fast, full = prepare(tmp_path / "a.jpg", pp), prepare(tmp_path / "a.png", pp)
    assert fast.shape == full.shape and np.abs(fast - full).mean() < 0.03  # the same picture

"""Subcategory analysis on features with planted structure (nested Gaussian blobs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import normalized_mutual_info_score as nmi

from services.clustering import scores
from services.clustering.density_peaks import DensityPeaks
from services.clustering.distances import correlation_index, labelled_sample
from services.clustering.hierarchy import Hierarchical
from services.clustering.intrinsic_dim import TwoNN, id_by_decimation
from services.clustering.synthetic import nested_blobs

if TYPE_CHECKING:
    from semtag.settings import Settings

Blobs = tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def blobs() -> Blobs:
    # 10 classes × 3 planted subclasses in a 6-D subspace of 40-D space
    return nested_blobs(3000, dim=40, latent_dim=6, classes=10, subclasses=3, seed=1)


def test_two_nn_finds_the_true_dimension_and_agrees_with_scikit_dimension() -> None:
    import skdim

    rng = np.random.default_rng(0)
    for d in (2, 5, 8):
        z = rng.normal(size=(3000, d))
        basis, _ = np.linalg.qr(rng.normal(size=(30, d)))
        X = z @ basis.T
        est = TwoNN(0.9).fit(X).dimension_
        assert est == pytest.approx(d, rel=0.1)
        ref = skdim.id.TwoNN(discard_fraction=0.1).fit(X).dimension_
        assert abs(est - ref) <= 0.1


def test_id_by_decimation_reports_each_size_and_fraction(blobs: Blobs) -> None:
    X, _, _ = blobs
    rows = id_by_decimation(X, min_points=300, repeats=2)
    assert [r["n"] for r in rows] == [3000, 1500, 750, 375]
    assert {"id_90", "id_70", "id_50", "std_90"} <= set(rows[0])
    assert rows[0]["id_90"] == pytest.approx(6, rel=0.1)


@pytest.mark.parametrize("method", ["ward", "centroid"])
def test_ward_and_centroid_recover_the_planted_structure(blobs: Blobs, method: str) -> None:
    X, cls, sub = blobs
    h = Hierarchical(method).fit(X)
    assert nmi(cls, h.labels(10)) > 0.9
    assert nmi(sub, h.labels(30)) > 0.85


def test_single_and_complete_and_the_complete_budget(blobs: Blobs) -> None:
    X, cls, _ = blobs
    assert nmi(cls, Hierarchical("single").fit(X).labels(10)) > 0.5
    assert nmi(cls, Hierarchical("complete").fit(X).labels(10)) > 0.8
    with pytest.raises(ValueError, match="budget"):
        Hierarchical("complete", memory_budget_bytes=1_000_000).fit(X)
    sampled = Hierarchical("complete", memory_budget_bytes=1_000_000, sample_size=400).fit(X)
    labels = sampled.labels(10)
    assert len(labels) == len(X) and nmi(cls, labels) > 0.7


def test_density_peaks_hierarchy_cuts_at_any_k(blobs: Blobs) -> None:
    X, cls, sub = blobs
    dp = DensityPeaks(k=40).fit(X)
    assert dp.intrinsic_dim_ == pytest.approx(6, rel=0.15)
    assert dp.n_peaks_ >= 30
    assert nmi(cls, dp.labels(10)) > 0.85
    assert nmi(sub, dp.labels(30)) > 0.75
    for k in (1, 5, dp.n_peaks_):
        assert len(np.unique(dp.labels(k))) == k
    with pytest.raises(ValueError, match="peaks"):
        dp.labels(dp.n_peaks_ + 1)


def test_good_scenario_is_perfect_at_ten_and_uniform_is_near_zero(blobs: Blobs) -> None:
    _, cls, _ = blobs
    assert nmi(cls, scores.good_scenario(cls, 10)) == pytest.approx(1.0)
    g40 = scores.good_scenario(cls, 40)
    assert len(np.unique(g40)) == 40 and nmi(cls, g40) < 1.0
    assert nmi(cls, scores.uniform_scenario(len(cls), 10)) < 0.02
    ref = scores.reference_curves(cls, scores.k_grid(len(cls)))
    assert ref["good"][0] == {"k": 10, "nmi": pytest.approx(1.0)}
    assert ref["uniform"][-1]["k"] == len(cls)


def test_correlation_index_is_higher_for_a_space_that_separates_labels(blobs: Blobs) -> None:
    X, cls, _ = blobs
    idx = labelled_sample(cls, 400)
    assert np.all(np.diff(cls[idx]) >= 0)
    good = correlation_index(X[idx], cls[idx])
    noise = correlation_index(np.random.default_rng(0).normal(size=(400, 40)), cls[idx])
    assert good > 0.5 and abs(noise) < 0.1


def test_bad_parameters_give_clear_errors(blobs: Blobs) -> None:
    X, cls, _ = blobs
    h = Hierarchical("ward").fit(X[:50])
    with pytest.raises(ValueError, match="outside 1..50"):
        h.labels(51)
    with pytest.raises(ValueError, match="non-empty"):
        Hierarchical("ward").fit(np.zeros((0, 4)))
    bad = X[:20].copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Hierarchical("centroid").fit(bad)
    with pytest.raises(ValueError, match="linkage"):  # scikit-learn style: parameters are checked by fit
        Hierarchical("average").fit(X[:20])
    with pytest.raises(ValueError, match="exceeds"):
        scores.good_scenario(cls[:20], 21)


def test_density_peaks_merge_touching_peaks_through_their_saddle() -> None:
    rng = np.random.default_rng(3)
    centres = np.array([[0, 0], [3, 0], [20, 0], [23, 0]], float)  # two pairs of touching blobs
    X = np.concatenate([c + rng.normal(0, 1, (400, 2)) for c in centres])
    truth_pairs = np.repeat([0, 0, 1, 1], 400)
    dp = DensityPeaks(k=30, intrinsic_dim=2).fit(X)
    assert dp.saddles_, "touching blobs must share a saddle"
    assert nmi(truth_pairs, dp.labels(2)) > 0.95


def test_analysis_writes_figures_and_report(tmp_path: Path, blobs: Blobs) -> None:
    from services.clustering.analysis import AnalysisConfig, analyse

    X, cls, _ = blobs
    labels = cls.copy()
    labels[::3] = -1  # a third unlabelled: scored on the labelled ones only
    report = analyse(X[:1200], labels[:1200], AnalysisConfig(ae_epochs=15, code_dim=6, dp_k=20), tmp_path)
    for f in ("id_vs_n.png", "distance_discrete.png", "distance_features.png", "distance_codes.png",
              "nmi_vs_k.png", "report.html", "analysis.json", "codes.npy"):
        assert (tmp_path / f).is_file(), f
    assert set(report["methods"]) == {"single", "complete", "centroid", "ward", "density_peaks"}
    ward = report["methods"]["ward"]["scores"]
    assert ward[0]["k"] == 10 and ward[0]["nmi"] > 0.8
    assert report["autoencoder"]["code_dim"] == 6 and report["autoencoder"]["reconstruction_loss"] < 1.0
    assert report["correlation_index"]["codes"] > 0.3
    assert "<img src='nmi_vs_k.png'>" in (tmp_path / "report.html").read_text()


def test_cluster_cli_on_saved_features(tmp_path: Path, blobs: Blobs, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from semtag.cli import main

    X, cls, _ = blobs
    np.save(tmp_path / "X.npy", X[:600])
    np.save(tmp_path / "y.npy", cls[:600])
    assert main(["cluster", "--features", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--out", str(tmp_path / "rep"), "--no-autoencoder", "--methods", "ward,centroid"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["methods"]["ward"] > 0.8 and (tmp_path / "rep" / "report.html").is_file()
    bad = X[:600].copy()
    bad[5] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    assert main(["cluster", "--features", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "r2")]) == 2
    assert "NaN" in capsys.readouterr().err


def test_clustering_job_writes_the_subcategory_tree(sqlite_settings: Settings, alexnet_onnx: Path) -> None:
    from tests.conftest import Client

    c = Client(sqlite_settings)
    try:
        c.activate_model(alexnet_onnx)
        ids = c.upload_synthetic(40, 128, seed=500)
        for k, iid in enumerate(ids[:20]):
            assert c.http.put(f"/v1/images/{iid}/label", json={"category": k % 10},
                              headers=c.auth("curator")).status_code == 200
        h = c.auth("admin")
        r = c.http.post("/v1/admin/jobs", json={"kind": "clustering", "params": {
            "scale_min_nm": None, "scale_max_nm": None, "k": 2, "ae_epochs": 5, "code_dim": 4, "dp_k": 5}}, headers=h)
        assert r.status_code == 202, r.text
        c.wait()
        job = c.http.get(f"/v1/admin/jobs/{r.json()['id']}", headers=h).json()
        assert job["status"] == "succeeded", job["error"]
        assert job["result"]["images"] == 40 and job["result"]["labelled"] == 20
        tree = c.get("/v1/subcategories").json()
        subs = tree["subcategories"]
        assert subs and sum(sc["size"] for sc in subs) == 40
        assert all(sc["parent_category"] in tree["tree"] for sc in subs)
        first = subs[0]
        detail = c.get(f"/v1/subcategories/{first['id']}", params={"limit": 1}).json()
        assert len(detail["members"]) == 1 and (detail["next_cursor"] is not None) == (first["size"] > 1)
        assert set(first["representatives"]) <= set(ids)
        found = c.get("/v1/images", params={"subcategory": first["id"]}).json()["items"]
        assert len(found) == first["size"]
        assert Path(job["result"]["report"]).is_file()
        # an empty selection is a clear failure of the job, nothing is written
        r = c.http.post("/v1/admin/jobs", json={"kind": "clustering", "params": {"scale_min_nm": 1e6,
                                                                                   "scale_max_nm": 2e6}}, headers=h)
        c.wait()
        job = c.http.get(f"/v1/admin/jobs/{r.json()['id']}", headers=h).json()
        assert job["status"] == "failed" and "no classified images" in job["error"]
        r = c.http.post("/v1/admin/jobs", json={"kind": "clustering", "params": {"method": "kmeans"}}, headers=h)
        assert r.status_code == 422
        assert c.get("/v1/subcategories/999999").status_code == 404
    finally:
        c.close()


def test_brute_force_neighbours_in_high_dimension_match_a_kd_tree(blobs: Blobs) -> None:
    from scipy.spatial import cKDTree

    from services.clustering.intrinsic_dim import two_nearest

    X = blobs[0][:1500].astype(np.float64)  # 40-D: the chunked matrix-product path
    d, _ = cKDTree(X).query(X, k=3)
    assert np.allclose(two_nearest(X, chunk=256), d[:, 1:3], rtol=1e-3, atol=1e-2)


def test_cluster_cli_on_an_image_folder(tmp_path: Path, tiny_data: Path, alexnet_onnx: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from semtag.cli import main

    assert main(["cluster", "--images", str(tiny_data), "--model", str(alexnet_onnx), "--all-scales",
                 "--no-autoencoder", "--methods", "ward,single", "--out", str(tmp_path / "rep")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 50 and set(out["methods"]) == {"ward", "single"}  # labels from the category folders
    assert (tmp_path / "rep" / "nmi_vs_k.png").is_file()
    assert main(["cluster", "--images", str(tiny_data), "--all-scales", "--out", str(tmp_path / "r2")]) == 2
    assert "--model" in capsys.readouterr().err


# --- scikit-learn conventions -------------------------------------------------------------------

@pytest.mark.parametrize("estimator", [Hierarchical("ward"), Hierarchical("single"), Hierarchical("centroid"),
                                       Hierarchical("complete"), DensityPeaks(k=5), TwoNN()], ids=repr)
def test_estimators_pass_scikit_learn_checks(estimator: object) -> None:
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(estimator, on_fail=None)
    failed = [f"{r['check_name']}: {r['exception']!r}" for r in results if r["status"] == "failed"]
    assert not failed, "\n".join(failed)
    assert sum(r["status"] == "passed" for r in results) >= 35


def test_params_are_stored_verbatim_and_clone_round_trips() -> None:
    from services.clustering.autoencoder import Autoencoder

    hidden = [32, 8]  # a list stays the same list: __init__ neither copies nor converts
    cases = [Hierarchical("complete", n_clusters=7, memory_budget_bytes=123, sample_size=40, seed=3),
             DensityPeaks(k=12, intrinsic_dim=4.5, n_clusters=3), TwoNN(fraction=0.7),
             Autoencoder(code_dim=4, hidden=hidden, epochs=3, batch_size=16, patience=2, validation_fraction=0.2,
                         lr=0.01, seed=5)]
    for est in cases:
        params = est.get_params()
        twin = clone(est)
        assert twin is not est and twin.get_params() == params
        assert type(est)().set_params(**params).get_params() == params
    assert cases[3].hidden is hidden
    # invalid values are accepted by __init__ and set_params, and refused by fit
    for est in (Hierarchical("average"), Hierarchical(n_clusters=0), DensityPeaks(k=1), TwoNN(fraction=1.5),
                Autoencoder(code_dim=0), DensityPeaks().set_params(intrinsic_dim=-1.0)):
        with pytest.raises(ValueError):
            est.fit(np.random.default_rng(0).normal(size=(40, 3)))


def test_fit_validates_the_features(blobs: Blobs) -> None:
    from services.clustering.autoencoder import Autoencoder

    X = blobs[0][:60]
    nan = X.copy()
    nan[2, 0] = np.inf
    for est in (Hierarchical(), DensityPeaks(k=5), TwoNN(), Autoencoder(epochs=1)):
        with pytest.raises(ValueError, match="NaN or infinity"):
            est.fit(nan)
        with pytest.raises(ValueError, match="2D array"):
            est.fit(X[0])
        with pytest.raises(ValueError, match="0 feature"):
            est.fit(np.zeros((20, 0)))
    with pytest.raises(ValueError, match="n_samples = 1"):
        Hierarchical().fit(X[:1])
    with pytest.raises(ValueError, match="need more than 30 points"):
        DensityPeaks().fit(X[:30])
    with pytest.raises(ValueError, match="at least 10 points"):
        Autoencoder(epochs=1).fit(X[:9])


def test_labels_are_the_cut_at_n_clusters_and_any_k_stays_available(blobs: Blobs) -> None:
    X, cls, _ = blobs
    h = Hierarchical("ward", n_clusters=10).fit(X[:600])
    assert np.array_equal(h.labels_, h.labels_at(10)) and len(np.unique(h.labels_)) == 10
    assert np.array_equal(h.labels(25), h.labels_at(25)) and h.max_k_ == 600
    assert np.array_equal(clone(h).fit_predict(X[:600]), h.labels_)
    assert len(np.unique(Hierarchical().fit(X[:600]).labels_)) == 2  # scikit-learn's default n_clusters
    with pytest.raises(ValueError, match="exceeds"):
        Hierarchical(n_clusters=31).fit(X[:30])
    sampled = Hierarchical("complete", sample_size=50, n_clusters=5).fit(X[:300])
    assert sampled.max_k_ == 50 and len(sampled.labels_) == 300 and len(sampled.nearest_sample_) == 300
    with pytest.raises(ValueError, match="outside 1..50 .the sampled points"):
        sampled.labels_at(51)

    dp = DensityPeaks(k=40).fit(X)
    assert dp.max_k_ == dp.n_peaks_ == len(dp.peaks_)
    assert len(np.unique(dp.labels_)) == dp.n_peaks_  # n_clusters=None: one cluster per peak
    dp10 = DensityPeaks(k=40, n_clusters=10).fit(X)
    assert np.array_equal(dp10.labels_, dp.labels_at(10)) and np.array_equal(dp.labels(10), dp.labels_at(10))
    with pytest.raises(ValueError, match=f"found only {dp.n_peaks_} peaks"):
        DensityPeaks(k=40, n_clusters=dp.n_peaks_ + 1).fit(X)


def test_two_nn_exposes_its_estimate_and_is_no_transformer(blobs: Blobs) -> None:
    est = TwoNN().fit(blobs[0])
    assert isinstance(est.dimension_, float) and est.n_features_in_ == 40
    assert not hasattr(est, "fit_transform") and not hasattr(est, "transform")


def test_autoencoder_is_a_transformer(blobs: Blobs) -> None:
    from sklearn.exceptions import NotFittedError

    from services.clustering.autoencoder import Autoencoder

    X = blobs[0][:200]
    ae = Autoencoder(code_dim=3, hidden=(16,), epochs=3, patience=2)
    with pytest.raises(NotFittedError):
        ae.transform(X)
    Z = ae.fit_transform(X)
    assert Z.shape == (200, 3) and Z.dtype == np.float32 and ae.n_features_in_ == 40
    assert np.allclose(ae.transform(X), Z, atol=1e-5)
    with pytest.raises(ValueError, match="40 features"):
        ae.transform(X[:, :5])
    assert clone(ae).get_params() == ae.get_params() and not hasattr(clone(ae), "encoder_")


# --- the report ---------------------------------------------------------------------------------

def _method_sections(page: str) -> dict[str, str]:
    """The HTML under each method's <h3> heading, up to the next heading."""
    import re

    return {m.group(1): m.group(2) for m in re.finditer(r"<h3>(.*?)</h3>(.*?)(?=<h[123]>|\Z)", page, re.S)}


def test_report_says_why_a_method_has_no_scores(tmp_path: Path) -> None:
    import json

    from services.clustering.analysis import AnalysisConfig, analyse

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))  # one Gaussian blob: one density peak at a wide neighbourhood
    labels = np.repeat([0, 1], 40)
    cfg = AnalysisConfig(methods=("ward", "density_peaks", "complete"), autoencoder=False, dp_k=60,
                         complete_sample=30)
    report = analyse(X, labels, cfg, tmp_path / "one")
    dp = report["methods"]["density_peaks"]
    assert dp["peaks"] < 10 and "scores" not in dp and "density peak" in dp["note"]
    # sampled complete linkage: scored up to the sample size (its hierarchy's leaves), not beyond
    assert report["methods"]["complete"]["max_k"] == 30
    assert max(r["k"] for r in report["methods"]["complete"]["scores"]) <= 30
    page = (tmp_path / "one" / "report.html").read_text()
    sections = _method_sections(page)
    assert set(sections) == {"ward", "density_peaks", "complete"}
    assert all(body.strip() for body in sections.values()), sections
    assert "density peak" in sections["density_peaks"] and "<table>" not in sections["density_peaks"]
    assert json.loads((tmp_path / "one" / "analysis.json").read_text())["methods"]["density_peaks"]["note"]

    # more neighbours than points: density peaks fail; the report gives the error, the others go on
    report = analyse(X, labels, AnalysisConfig(methods=("ward", "density_peaks"), autoencoder=False, dp_k=100),
                     tmp_path / "err")
    assert "need more than 100 points" in report["methods"]["density_peaks"]["error"]
    sections = _method_sections((tmp_path / "err" / "report.html").read_text())
    assert "not run: density peaks with k = 100 need more than 100 points" in sections["density_peaks"]
    assert "<table>" in sections["ward"]

    # no hand labels: nothing is scored, and every section says so
    analyse(X, np.full(80, -1), AnalysisConfig(methods=("ward", "density_peaks"), autoencoder=False, dp_k=10),
            tmp_path / "unlabelled")
    sections = _method_sections((tmp_path / "unlabelled" / "report.html").read_text())
    assert all("hand labels" in body or "density peak" in body for body in sections.values()), sections


def test_heatmaps_label_their_axes_and_colour_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import contextmanager

    from services.clustering import distances
    from services.plotting import png_figure

    drawn = []

    @contextmanager
    def keep(path: Path, figsize: tuple[float, float]) -> Iterator[tuple[Any, Any]]:
        with png_figure(path, figsize) as (fig, ax):
            drawn.append((fig, ax))
            yield fig, ax

    monkeypatch.setattr(distances, "png_figure", keep)
    labels = np.repeat([0, 1, 2], 5)
    distances.heatmap_png(distances.discrete_distance(labels), tmp_path / "h.png", "discrete", labels,
                          value_label="discrete distance")
    fig, ax = drawn[0]
    assert ax.get_xlabel() == ax.get_ylabel() == "image (sorted by label)"
    assert [a.get_ylabel() for a in fig.axes if a is not ax] == ["discrete distance"]
    assert (tmp_path / "h.png").is_file()

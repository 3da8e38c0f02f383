"""The paper's section-3 analysis on a feature matrix: ID → autoencoder → distances → clusterings → NMI.

:func:`analyse` works on arrays alone (features, hand labels where known, −1 elsewhere) and
writes its figures and ``report.html`` into a folder; :mod:`services.clustering.subcategories` feeds it
from the database and writes the resulting category → subcategory tree back.

The estimators and helpers it calls raise :class:`ValueError` for bad input, as scikit-learn's
do. :func:`analyse` is where they meet the callers that face users (``semtag cluster`` and the
clustering job): its own input checks raise :class:`~services.errors.BadInput`, and a method
that fails on the data (complete linkage over its memory budget, density peaks on too few
points) is reported in the analysis, with its message, instead of ending it.
"""

from __future__ import annotations

import html
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.clustering import scores
from services.clustering.density_peaks import DensityPeaks
from services.clustering.distances import (
    correlation_index,
    discrete_distance,
    euclidean_matrix,
    heatmap_png,
    labelled_sample,
)
from services.clustering.hierarchy import DEFAULT_BUDGET, METHODS, Hierarchical, check_features
from services.clustering.intrinsic_dim import TwoNN, id_by_decimation, subsample
from services.errors import BadInput, BadParams
from services.plotting import png_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

ALL_METHODS = (*METHODS, "density_peaks")
Progress = Callable[[float, str], None]


@dataclass
class AnalysisConfig:
    methods: tuple[str, ...] = ALL_METHODS
    autoencoder: bool = True
    code_dim: int | None = 10            # None: the rounded 2-NN estimate
    ae_epochs: int = 200
    dp_k: int = 30                       # neighbours of the density-peaks estimate
    complete_budget_bytes: int = DEFAULT_BUDGET
    complete_sample: int | None = None   # complete linkage on a sample of this size (None: all, if in budget)
    heatmap_sample: int = 400
    k_points: int = 12
    k_min: int = 10
    id_repeats: int = 3
    id_max_points: int = 50_000          # the 2-NN estimate on at most this many points (N² cost)
    seed: int = 0
    extra: dict = field(default_factory=dict)


@contextmanager
def _timed(stats: dict, name: str) -> Iterator[None]:
    """Seconds and peak Python memory of the block, recorded in ``stats[name]`` (also when it raises)."""
    tracemalloc.start()
    t = time.perf_counter()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stats[name] = {"seconds": round(time.perf_counter() - t, 3), "peak_python_mb": round(peak / 2**20, 1)}


def fit_method(method: str, Z: np.ndarray, cfg: AnalysisConfig) -> Hierarchical | DensityPeaks:
    """The fitted hierarchy of ``method`` (a linkage or ``density_peaks``); cut it with ``labels_at(k)``."""
    if method == "density_peaks":
        return DensityPeaks(k=cfg.dp_k).fit(Z)
    return Hierarchical(method, memory_budget_bytes=cfg.complete_budget_bytes,
                        sample_size=cfg.complete_sample if method == "complete" else None, seed=cfg.seed).fit(Z)


def max_k(model: Hierarchical | DensityPeaks) -> int:
    """The most clusters a fitted hierarchy can be cut into."""
    return model.max_k_


def _unscored_note(model: Hierarchical | DensityPeaks, ks: list[int], labelled: int) -> str | None:
    """Why a fitted method has no NMI scores, or None when it has them."""
    top = max_k(model)
    if isinstance(model, DensityPeaks) and top < 2:
        return (f"found {top} density peak with k = {model.k} neighbours; at least 2 are needed to cut the "
                "hierarchy into clusters (a smaller neighbourhood k finds more peaks)")
    if labelled < 2:
        return f"not scored: {labelled} image(s) have hand labels; the NMI needs at least 2"
    if not any(k <= top for k in ks):
        what = (f"found {top} density peaks with k = {model.k} neighbours, so its hierarchy has at most {top} "
                "clusters" if isinstance(model, DensityPeaks) else f"its hierarchy has at most {top} clusters")
        hint = "; a smaller neighbourhood k finds more peaks" if isinstance(model, DensityPeaks) else ""
        return f"not scored: {what}, fewer than the smallest k scored ({min(ks)}){hint}"
    return None


def analyse(X: np.ndarray, labels: np.ndarray, cfg: AnalysisConfig, out_dir: Path | str,
            progress: Progress | None = None) -> dict[str, Any]:
    """Run the analysis; labels: hand labels 0–9, or −1 for unlabelled points. Returns the report."""
    try:
        X = check_features(X)
    except ValueError as exc:
        raise BadInput(str(exc), "bad_features") from exc
    labels = np.asarray(labels, np.int64)
    if len(labels) != len(X):
        raise BadInput(f"{len(X)} feature vectors but {len(labels)} labels", "bad_features")
    if len(X) < 20:
        raise BadInput(f"the selection holds {len(X)} images; the analysis needs at least 20", "empty_selection")
    bad = set(cfg.methods) - set(ALL_METHODS)
    if bad:
        raise BadParams(f"unknown method(s) {', '.join(sorted(bad))}; choose from {', '.join(ALL_METHODS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda f, m: None)
    stats: dict[str, dict] = {}
    report: dict[str, Any] = {"n": len(X), "dim": X.shape[1], "labelled": int((labels >= 0).sum()),
                              "config": asdict(cfg)}

    say(0.05, "intrinsic dimension (2-NN)")
    with _timed(stats, "intrinsic_dimension"):
        Xid = subsample(X, cfg.id_max_points, cfg.seed)
        curve = id_by_decimation(Xid, min_points=min(100, len(Xid)), repeats=cfg.id_repeats, seed=cfg.seed)
    report["intrinsic_dimension"] = {"estimate": curve[0]["id_90"], "by_sample_size": curve,
                                     "points_used": len(Xid)}
    _plot_id(curve, out / "id_vs_n.png")

    Z = X
    if cfg.autoencoder:
        from services.clustering.autoencoder import Autoencoder

        code = cfg.code_dim or max(2, int(round(curve[0]["id_90"])))
        say(0.15, f"autoencoder to {code} dimensions")
        with _timed(stats, "autoencoder"):
            ae = Autoencoder(code_dim=code, epochs=cfg.ae_epochs, seed=cfg.seed).fit(X)
            Z = ae.transform(X)
        report["autoencoder"] = {"code_dim": code, "reconstruction_loss": ae.reconstruction_loss_,
                                 "epochs": ae.epochs_run_, "id_after": TwoNN(0.9).fit(Z).dimension_}
    np.save(out / "codes.npy", Z)

    lab = labels >= 0
    if lab.sum() >= 2:
        say(0.3, "distance heatmaps")
        idx = labelled_sample(labels, cfg.heatmap_sample, cfg.seed)
        heatmap_png(discrete_distance(labels[idx]), out / "distance_discrete.png", "discrete distance", labels[idx],
                    value_label="discrete distance (0: same label, 1: different)")
        heatmap_png(euclidean_matrix(X[idx]), out / "distance_features.png", "Euclidean, features", labels[idx],
                    value_label="Euclidean distance")
        report["correlation_index"] = {"features": correlation_index(X[idx], labels[idx])}
        if cfg.autoencoder:
            heatmap_png(euclidean_matrix(Z[idx]), out / "distance_codes.png", "Euclidean, autoencoder codes",
                        labels[idx], value_label="Euclidean distance")
            report["correlation_index"]["codes"] = correlation_index(Z[idx], labels[idx])

    ks = scores.k_grid(len(Z), start=min(cfg.k_min, len(Z)), points=cfg.k_points)
    report["k_grid"] = ks
    report["methods"] = {}
    models = {}
    for n, method in enumerate(cfg.methods):
        say(0.35 + 0.5 * n / len(cfg.methods), f"clustering: {method}")
        try:
            with _timed(stats, method):
                model = fit_method(method, Z, cfg)
        except ValueError as exc:  # e.g. complete linkage over its memory budget: reported, not fatal
            report["methods"][method] = {"error": str(exc)}
            continue
        models[method] = model
        mk = [k for k in ks if k <= max_k(model)]
        entry: dict[str, Any] = {"max_k": max_k(model)}
        if lab.sum() >= 2 and mk:
            entry["scores"] = scores.score_curve(model.labels_at, labels, mk, lab)
        if isinstance(model, DensityPeaks):
            entry["peaks"] = model.n_peaks_
        note = _unscored_note(model, ks, int(lab.sum()))
        if note and "scores" not in entry:
            entry["note"] = note
        report["methods"][method] = entry
    if lab.sum() >= 2:
        report["reference"] = scores.reference_curves(labels[lab], [k for k in ks if k <= lab.sum()], cfg.seed)
        _plot_nmi(report, out / "nmi_vs_k.png")
    report["timings"] = stats
    (out / "analysis.json").write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    write_html(report, out)
    say(0.9, "analysis written")
    report["_models"] = models
    report["_codes"] = Z
    return report


def _plot_id(curve: list[dict], path: Path) -> None:
    with png_figure(path, (6, 4)) as (_, ax):
        for key, lab in (("90", "90% of points"), ("70", "70%"), ("50", "50%")):
            ax.errorbar([r["n"] for r in curve], [r[f"id_{key}"] for r in curve],
                        yerr=[r[f"std_{key}"] for r in curve], marker="o", ms=3, capsize=2, label=lab)
        _log_x_axes(ax, "number of points (decimation)", "2-NN intrinsic dimension")


def _plot_nmi(report: dict, path: Path) -> None:
    with png_figure(path, (6.5, 4.2)) as (_, ax):
        for method, entry in report["methods"].items():
            if "scores" in entry:
                ax.plot([r["k"] for r in entry["scores"]], [r["nmi"] for r in entry["scores"]], marker="o", ms=3,
                        label=method)
        for name, style in (("good", "k--"), ("uniform", "k:")):
            rows = report["reference"][name]
            if rows:
                ax.plot([r["k"] for r in rows], [r["nmi"] for r in rows], style, label=f"{name} scenario")
        _log_x_axes(ax, "number of clusters k", "NMI with the labels")


def _log_x_axes(ax: Axes, xlabel: str, ylabel: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def write_html(report: dict, out: Path) -> Path:
    """A self-contained report page next to its PNG figures."""
    def table(rows: list[dict], cols: list[str]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                       for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    parts = ["<!doctype html><meta charset='utf-8'><title>semtag subcategory analysis</title>",
             "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}</style>",
             "<h1>Subcategory analysis</h1>",
             f"<p>{report['n']} images, {report['dim']}-dimensional features, "
             f"{report['labelled']} with hand labels.</p>"]
    idr = report["intrinsic_dimension"]
    parts += [f"<h2>Intrinsic dimension</h2><p>2-NN estimate (90% of points): {idr['estimate']:.2f}</p>",
              "<img src='id_vs_n.png'>", table(idr["by_sample_size"], ["n", "id_90", "id_70", "id_50"])]
    if "autoencoder" in report:
        a = report["autoencoder"]
        parts.append(f"<h2>Autoencoder</h2><p>code dimension {a['code_dim']}, validation reconstruction loss "
                     f"{a['reconstruction_loss']:.4f} after {a['epochs']} epochs, "
                     f"ID after encoding {a['id_after']:.2f}</p>")
    if "correlation_index" in report:
        parts.append("<h2>Distances</h2><p>correlation with the discrete distance: " + ", ".join(
            f"{k} {v:.3f}" for k, v in report["correlation_index"].items()) + "</p>")
        for f in ("distance_discrete.png", "distance_features.png", "distance_codes.png"):
            if (out / f).exists():
                parts.append(f"<img src='{f}' style='width:32%'>")
    parts.append("<h2>Clusterings</h2>")
    if (out / "nmi_vs_k.png").exists():
        parts.append("<img src='nmi_vs_k.png'>")
    for method, entry in report["methods"].items():
        parts.append(f"<h3>{html.escape(method)}</h3>")
        parts += _method_section(entry, table)
    if "tree" in report:
        parts.append("<h2>Category → subcategory tree</h2>")
        parts.append(table(report["tree"], ["parent_category", "name", "size", "method", "k", "representatives"]))
    parts.append("<h2>Time and memory per step</h2>" + table(
        [{"step": k, **v} for k, v in report.get("timings", {}).items()], ["step", "seconds", "peak_python_mb"]))
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _method_section(entry: dict, table: Callable[[list[dict], list[str]], str]) -> list[str]:
    """The body under a method's heading: never empty; says why when there are no scores."""
    if "error" in entry:
        return [f"<p>not run: {html.escape(str(entry['error']))}</p>"]
    if entry.get("scores"):
        out = [] if "peaks" not in entry else [
            f"<p>{entry['peaks']} density peaks: the hierarchy can be cut into at most {entry['peaks']} clusters.</p>"]
        return out + [table(entry["scores"], ["k", "nmi", "ari", "clusters", "min", "median", "max", "singletons"])]
    note = entry.get("note") or (f"no scores (the hierarchy can be cut into at most {entry['max_k']} clusters)"
                                 if "max_k" in entry else "no scores")
    return [f"<p>{html.escape(note)}</p>"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return ""
    return str(v)


def medoids(Z: np.ndarray, members: np.ndarray, n: int = 3) -> list[int]:
    """Indices (into Z) of the ``n`` members closest to the members' centroid."""
    c = Z[members].mean(0)
    d = ((Z[members] - c) ** 2).sum(1)
    return [int(members[i]) for i in np.argsort(d)[:n]]

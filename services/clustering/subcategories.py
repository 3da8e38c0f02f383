"""Subcategories in the repository: select images, compute features once, analyse, write the tree.

A clustering run (admin job ``clustering`` or ``semtag cluster``):
1. selects the classified images in a scale range (default the paper's 1 µm–2 µm bars) or all;
2. computes the active model's features for them (``logits``, the paper's choice, or the pooled
   ``features``) through the shared inference engine, cached per model file in
   ``<data_dir>/features/`` with the image ids, so each image is computed once;
3. runs :func:`services.clustering.analysis.analyse` (ID, autoencoder, distances, the five
   clusterings, NMI against the curators' labels) with an HTML report;
4. cuts the chosen method's hierarchy into subcategories — within each category (the paper's next
   step), or over the whole selection — and writes them with their medoids, pointing every member
   image at its subcategory.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.classify import registry
from services.clustering.analysis import AnalysisConfig, analyse, medoids
from services.clustering.schemas import ClusteringParams
from services.data.categories import index_of
from services.errors import BadInput, parse_params
from services.events import outbox as events
from services.jobs.service import JobContext
from services.runtime import Runtime
from services.scale.units import range_conditions
from services.tables import HumanLabel, Image, ModelVersion, StepState, Subcategory

log = logging.getLogger(__name__)

def clustering_params(params: dict[str, Any] | ClusteringParams) -> dict[str, Any]:
    """A run's parameters through :class:`ClusteringParams`, every default filled in (BadParams otherwise)."""
    if isinstance(params, ClusteringParams):
        return params.model_dump()
    return parse_params(ClusteringParams, params, "clustering").model_dump()


def analysis_config(p: dict[str, Any]) -> AnalysisConfig:
    """The analysis settings of validated clustering parameters."""
    return AnalysisConfig(methods=tuple(p["methods"]), autoencoder=p["autoencoder"], code_dim=p["code_dim"],
                          ae_epochs=p["ae_epochs"], dp_k=p["dp_k"], complete_sample=p["complete_sample"],
                          complete_budget_bytes=p["complete_budget_mb"] * 2**20)


def select_images(session: Session, scale_min_nm: float | None, scale_max_nm: float | None) -> list[tuple]:
    """(id, storage_key, category) of classified images whose scale bar lies in [min, max) (the
    rule of the scale bins, :func:`services.scale.units.in_scale_range`), by id."""
    q = select(Image.id, Image.storage_key, Image.category).where(
        Image.inference_state == StepState.done.value, *range_conditions(Image.scale_nm, scale_min_nm, scale_max_nm)
    ).order_by(Image.id)
    return list(session.execute(q).all())


def hand_labels(session: Session, ids: list[int]) -> dict[int, int]:
    latest = select(HumanLabel.image_id, func.max(HumanLabel.id).label("lid")).group_by(HumanLabel.image_id).subquery()
    rows = session.execute(select(HumanLabel.image_id, HumanLabel.category)
                           .join(latest, latest.c.lid == HumanLabel.id)).all()
    wanted = set(ids)
    return {iid: index_of(cat) for iid, cat in rows if iid in wanted}


def features_for(rt: Runtime, model: ModelVersion, rows: list[tuple], output: str,
                 progress=None) -> tuple[np.ndarray, list[int]]:  # noqa: ANN001
    """Features of ``rows``' images from the model, computed once per (model file, output) and cached."""
    from services.classify import inference

    cache = rt.settings.data_dir / "features" / f"{model.file_sha256[:16]}_{output}.npz"
    have: dict[int, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache) as z:
            have = dict(zip(z["ids"].tolist(), z["X"]))
    todo = [(iid, key) for iid, key, _ in rows if iid not in have]
    if todo:
        eng = inference.engine_for(model.file_path, model.file_sha256)
        for n in range(0, len(todo), 64):
            chunk = todo[n:n + 64]
            xs, ok = [], []
            # fetched together, outside the try: an object-store outage stops the run instead of emptying it
            with rt.store.local_files([key for _, key in chunk], missing_ok=True) as paths:
                for (iid, _key), path in zip(chunk, paths):
                    assert path is not None
                    try:
                        xs.append(eng.decode(path)[0])
                        ok.append(iid)
                    except Exception:  # noqa: BLE001 — an unreadable blob is left out, and run_clustering says so
                        log.warning("clustering: image %s cannot be decoded; left out", iid)
            if xs:
                feats = eng.run(np.stack(xs), outputs=(output,))[output]
                have.update(zip(ok, feats))
            if progress:
                progress(min(1.0, (n + len(chunk)) / len(todo)))
        cache.parent.mkdir(parents=True, exist_ok=True)
        ids_all = np.array(sorted(have), np.int64)
        tmp = cache.with_suffix(".part.npz")
        if len(ids_all):
            np.savez(tmp, ids=ids_all, X=np.stack([have[i] for i in ids_all]))
            tmp.replace(cache)
    ids = [iid for iid, _, _ in rows if iid in have]
    if not ids:
        raise BadInput(f"none of the {len(rows)} selected images could be decoded", "empty_selection")
    return np.stack([have[i] for i in ids]).astype(np.float32), ids


def run_clustering(rt: Runtime, params: dict[str, Any], out_dir: Path, run_id: int | None = None,
                   progress=None) -> dict[str, Any]:  # noqa: ANN001
    p = clustering_params(params)
    say = progress or (lambda f, m: None)
    with rt.session() as s:
        model = registry.active(s)
        if model is None:
            raise BadInput("no active model: features come from the active classifier; activate one first",
                           "no_model")
        s.expunge(model)
        rows = select_images(s, p["scale_min_nm"], p["scale_max_nm"])
    if not rows:
        rng = (f"{p['scale_min_nm']}–{p['scale_max_nm']} nm" if p["scale_min_nm"] or p["scale_max_nm"] else "any scale")
        raise BadInput(f"no classified images with a scale bar in {rng}; widen the range, or set scale_min_nm and "
                       "scale_max_nm to null in the job, or pass --all-scales on the command line", "empty_selection")
    say(0.02, f"features of {len(rows)} images")
    X, ids = features_for(rt, model, rows, p["output"], lambda f: say(0.02 + 0.2 * f, "features"))
    kept = set(ids)
    left_out = [iid for iid, _, _ in rows if iid not in kept]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    np.savez(Path(out_dir) / "features.npz", ids=np.array(ids, np.int64), X=X, output=p["output"],
             model_version=model.version)
    cats = {iid: cat for iid, _, cat in rows}
    with rt.session() as s:
        hl = hand_labels(s, ids)
    labels = np.array([hl.get(i, -1) for i in ids])
    cfg = analysis_config(p)
    try:  # the estimators refuse data they cannot cluster with ValueError, as scikit-learn's do
        report = analyse(X, labels, cfg, out_dir, lambda f, m: say(0.22 + 0.6 * f, m))
        Z = report.pop("_codes")
        models = report.pop("_models")
        say(0.85, f"writing subcategories ({p['method']}, k = {p['k']}, within {p['within']})")
        tree = write_tree(rt, Z, ids, cats, p, models.get(p["method"]), cfg, run_id)
    except ValueError as exc:
        raise BadInput(f"clustering {len(ids)} images failed: {exc}", "clustering_failed") from None
    report["tree"] = tree
    report["model_version"] = model.version
    report["selection"] = {"scale_min_nm": p["scale_min_nm"], "scale_max_nm": p["scale_max_nm"], "images": len(ids)}
    from services.clustering.analysis import write_html

    write_html(report, Path(out_dir))
    (Path(out_dir) / "analysis.json").write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    return {"images": len(ids), "labelled": int((labels >= 0).sum()), "model_version": model.version,
            "left_out": {"count": len(left_out), "image_ids": left_out[:100],
                         "reason": "cannot be decoded" if left_out else None},
            "intrinsic_dimension": report["intrinsic_dimension"]["estimate"],
            "subcategories": len(tree), "report": str(Path(out_dir) / "report.html"),
            "nmi": {m: (e.get("scores") or [{}])[0].get("nmi") for m, e in report["methods"].items()}}


def write_tree(rt: Runtime, Z: np.ndarray, ids: list[int], cats: dict[int, str | None], p: dict, model,  # noqa: ANN001
               cfg: AnalysisConfig, run_id: int | None) -> list[dict]:
    from services.clustering.analysis import fit_method, max_k

    ids_arr = np.array(ids)
    groups: list[tuple[str | None, np.ndarray]]
    if p["within"] == "category":
        by_cat: dict[str | None, list[int]] = {}
        for n, iid in enumerate(ids):
            by_cat.setdefault(cats.get(iid), []).append(n)
        groups = [(c, np.array(v)) for c, v in sorted(by_cat.items(), key=lambda kv: str(kv[0]))]
    else:
        groups = [(None, np.arange(len(ids)))]
    tree: list[dict] = []
    new_members: dict[int, set[int]] = {}
    with rt.session() as s:
        named = named_memberships(s)  # the curators' names in the tree being replaced, with its members
        # The new tree replaces the old one: no image keeps a pointer into an earlier run, also
        # images outside this run's selection.
        s.execute(update(Image).where(Image.subcategory_id.is_not(None)).values(subcategory_id=None))
        for cat, members in groups:
            if len(members) < 2:
                continue
            m = model if (p["within"] == "all" and model is not None) else fit_method(p["method"], Z[members], cfg)
            k = min(p["k"], max_k(m), len(members))
            labels = m.labels(k)
            for c in range(int(labels.max()) + 1):
                local = np.flatnonzero(labels == c)
                if not len(local):
                    continue
                glob = members[local]
                parent = (cat if cat is not None
                          else Counter(cats.get(int(i)) for i in ids_arr[glob]).most_common(1)[0][0])
                reps = [int(ids_arr[i]) for i in medoids(Z, glob)]
                row = Subcategory(parent_category=parent, run_id=run_id, method=p["method"], k=k, index=c,
                                  name=f"{parent or 'all'} · {p['method']} {c + 1}/{k}", size=len(glob),
                                  representatives=reps)
                s.add(row)
                s.flush()
                s.execute(update(Image).where(Image.id.in_([int(i) for i in ids_arr[glob]]))
                          .values(subcategory_id=row.id))
                new_members[row.id] = {int(i) for i in ids_arr[glob]}
                tree.append({"id": row.id, "parent_category": parent, "name": row.name, "size": len(glob),
                             "method": p["method"], "k": k, "representatives": reps})
        for new_id, (old_id, jac) in match_names(named, new_members).items():
            old, heir = s.get(Subcategory, old_id), s.get(Subcategory, new_id)
            assert old is not None and heir is not None
            heir.name, heir.named_by, heir.named_at, heir.name_inherited_from = (old.name, old.named_by, old.named_at,
                                                                                 old.id)
            for node in tree:
                if node["id"] == new_id:
                    node.update(name=heir.name, name_inherited_from=old.id, jaccard=round(jac, 3))
        events.subcategories_updated(s, run_id, p, tree)
    return tree


NAME_JACCARD = 0.5  # a re-run's subcategory keeps a curator's name when its members overlap this much


def named_memberships(session: Session) -> dict[int, set[int]]:
    """Members of every subcategory that a curator named and that images point to now (the current tree)."""
    rows = session.execute(select(Image.subcategory_id, Image.id)
                           .join(Subcategory, Subcategory.id == Image.subcategory_id)
                           .where(Subcategory.named_by.is_not(None))).all()
    out: dict[int, set[int]] = {}
    for sid, iid in rows:
        if sid is not None:
            out.setdefault(sid, set()).add(iid)
    return out


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def match_names(named: dict[int, set[int]], new: dict[int, set[int]],
                threshold: float = NAME_JACCARD) -> dict[int, tuple[int, float]]:
    """new subcategory id → (named old id, Jaccard) for pairs at or above ``threshold``, one to one, the
    best overlaps first (two new sets can both reach exactly 0.5 with one old set: the first keeps it)."""
    pairs = sorted(((jaccard(o, n), oid, nid) for oid, o in named.items() for nid, n in new.items()
                    if o & n), key=lambda t: (-t[0], t[1], t[2]))
    taken_old: set[int] = set()
    out: dict[int, tuple[int, float]] = {}
    for jac, oid, nid in pairs:
        if jac >= threshold and oid not in taken_old and nid not in out:
            taken_old.add(oid)
            out[nid] = (oid, jac)
    return out


def clustering_job(ctx: JobContext) -> dict[str, Any]:
    """The ``clustering`` job's handler: a run whose report stays under ``<data_dir>/clustering/job-N``."""
    out = ctx.rt.settings.data_dir / "clustering" / f"job-{ctx.job_id}"
    return run_clustering(ctx.rt, ctx.params, out, run_id=ctx.job_id, progress=ctx.progress)

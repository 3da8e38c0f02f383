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
from services.clustering.schemas import (
    ClusteringParams,
    SubcategoryDetail,
    SubcategoryMember,
    SubcategoryRead,
    SubcategoryTree,
)
from services.data.categories import SLUGS, index_of, to_slug
from services.errors import BadInput, BadParams, NotFound, parse_params
from services.jobs.service import JobContext
from services.runtime import Runtime
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
    """(id, storage_key, category) of classified images in the scale range, by id."""
    q = select(Image.id, Image.storage_key, Image.category).where(
        Image.inference_state == StepState.done.value).order_by(Image.id)
    if scale_min_nm is not None:
        q = q.where(Image.scale_nm >= scale_min_nm)
    if scale_max_nm is not None:
        q = q.where(Image.scale_nm <= scale_max_nm)
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
            for iid, key in chunk:
                try:
                    xs.append(eng.decode(rt.store.local_path(key))[0])
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
    with rt.session() as s:
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
                tree.append({"id": row.id, "parent_category": parent, "name": row.name, "size": len(glob),
                             "method": p["method"], "k": k, "representatives": reps})
    return tree


def list_subcategories(session: Session, parent_category: str | None = None,
                       run_id: int | None = None) -> SubcategoryTree:
    """The category → subcategory tree (the latest run by default)."""
    if run_id is None:
        run_id = session.scalar(select(func.max(Subcategory.run_id)))
    q = select(Subcategory).order_by(Subcategory.parent_category, Subcategory.index)
    q = q.where(Subcategory.run_id == run_id) if run_id is not None else q
    if parent_category:
        q = q.where(Subcategory.parent_category == to_slug(parent_category))
    subs = list(session.scalars(q))
    tree: dict[str, list[int]] = {}
    for sc in subs:
        tree.setdefault(sc.parent_category or "none", []).append(sc.id)
    return SubcategoryTree(run_id=run_id, subcategories=[SubcategoryRead.model_validate(sc) for sc in subs],
                           tree=tree, categories=list(SLUGS))


def subcategory_detail(session: Session, sub_id: int, limit: int = 50, cursor: int | None = None) -> SubcategoryDetail:
    sc = session.get(Subcategory, sub_id)
    if sc is None:
        raise NotFound(f"subcategory {sub_id} not found")
    if not 1 <= limit <= 500:
        raise BadParams("limit must be 1–500")
    q = select(Image.id, Image.filename, Image.category, Image.pixel_size_nm).where(
        Image.subcategory_id == sub_id).order_by(Image.id).limit(limit + 1)
    if cursor is not None:
        q = q.where(Image.id > cursor)
    rows = session.execute(q).all()
    members = [SubcategoryMember(id=i, filename=f, category=c, pixel_size_nm=px) for i, f, c, px in rows[:limit]]
    return SubcategoryDetail(**SubcategoryRead.model_validate(sc).model_dump(exclude={"parent_category_name"}),
                             members=members, next_cursor=members[-1].id if len(rows) > limit else None)


def clustering_job(ctx: JobContext) -> dict[str, Any]:
    """The ``clustering`` job's handler: a run whose report stays under ``<data_dir>/clustering/job-N``."""
    out = ctx.rt.settings.data_dir / "clustering" / f"job-{ctx.job_id}"
    return run_clustering(ctx.rt, ctx.params, out, run_id=ctx.job_id, progress=ctx.progress)

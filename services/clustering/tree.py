"""The subcategory tree as the API and the console read and name it: the latest run's tree, one
subcategory's members, a curator's name for one. Kept apart from :mod:`services.clustering.subcategories`
(the clustering run), which brings scikit-learn and SciPy that readers of the tree never need.
"""

from __future__ import annotations

import unicodedata

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.clustering.schemas import SubcategoryDetail, SubcategoryMember, SubcategoryRead, SubcategoryTree
from services.data.categories import SLUGS, to_slug
from services.errors import BadInput, BadParams, NotFound
from services.tables import Image, Subcategory, utcnow

MAX_NAME = 128


def rename_subcategory(session: Session, sub_id: int, name: str, named_by: str) -> Subcategory:
    """A curator's name for a subcategory (kept by later runs whose members mostly match)."""
    sc = session.get(Subcategory, sub_id)
    if sc is None:
        raise NotFound(f"subcategory {sub_id} not found")
    clean = " ".join(name.split())
    if not clean:
        raise BadInput("the name is empty", "bad_name")
    if len(clean) > MAX_NAME:
        raise BadInput(f"the name has {len(clean)} characters; at most {MAX_NAME}", "bad_name")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in clean):
        raise BadInput("the name contains control or formatting characters", "bad_name")
    sc.name, sc.named_by, sc.named_at, sc.name_inherited_from = clean, named_by, utcnow(), None
    session.flush()
    return sc


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

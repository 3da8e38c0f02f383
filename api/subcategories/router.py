"""/v1/subcategories: the category → subcategory tree written by clustering runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.dependencies import IdPath, IdQuery, Principal, SessionDep, require
from api.errors import AUTH_ERRORS, documented
from services.clustering.schemas import RenameRequest, SubcategoryDetail, SubcategoryRead, SubcategoryTree
from services.clustering.tree import list_subcategories, rename_subcategory, subcategory_detail

router = APIRouter(prefix="/v1/subcategories", tags=["subcategories"])

Reader = Annotated[Principal, Depends(require("read"))]


@router.get("", response_model=SubcategoryTree, responses=documented(*AUTH_ERRORS, 422))
def read_tree(session: SessionDep, _who: Reader, parent_category: str | None = None,
              run_id: IdQuery = None) -> SubcategoryTree:
    """The tree of the latest clustering run (or of `run_id`)."""
    return list_subcategories(session, parent_category, run_id)


@router.get("/{sub_id}", response_model=SubcategoryDetail, responses=documented(*AUTH_ERRORS, 404, 422))
def read_subcategory(sub_id: IdPath, session: SessionDep, _who: Reader,
                     limit: Annotated[int, Query(ge=1, le=500)] = 50, cursor: IdQuery = None) -> SubcategoryDetail:
    """One subcategory with a page of its member images."""
    return subcategory_detail(session, sub_id, limit, cursor)


@router.put("/{sub_id}/name", response_model=SubcategoryRead, responses=documented(*AUTH_ERRORS, 404, 422))
def put_name(sub_id: IdPath, body: RenameRequest, session: SessionDep,
             who: Annotated[Principal, Depends(require("label"))]) -> SubcategoryRead:
    """Rename a subcategory (curator); a later clustering run keeps the name for the subcategory whose
    members mostly match (Jaccard >= 0.5)."""
    return SubcategoryRead.model_validate(rename_subcategory(session, sub_id, body.name, who.label))

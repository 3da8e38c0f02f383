"""/v1/subcategories: the category → subcategory tree written by clustering runs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from api.dependencies import Principal, get_session, require
from services.clustering.subcategories import list_subcategories, subcategory_detail

router = APIRouter(prefix="/v1/subcategories", tags=["subcategories"])


@router.get("")
def read_tree(parent_category: str | None = None, run_id: int | None = None, session: Session = Depends(get_session),
              _who: Principal = Depends(require("read"))) -> dict:
    return list_subcategories(session, parent_category, run_id)


@router.get("/{sub_id}")
def read_subcategory(sub_id: int, limit: int = Query(50, ge=1, le=500), cursor: int | None = None,
                     session: Session = Depends(get_session), _who: Principal = Depends(require("read"))) -> dict:
    return subcategory_detail(session, sub_id, limit, cursor)

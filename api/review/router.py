"""/v1/review: the curators' queue of predictions that need a human look, least confident first."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from api.dependencies import Principal, get_session, require
from services.curation.service import MAX_PAGE, review_queue

router = APIRouter(prefix="/v1/review", tags=["curation"])


@router.get("")
def list_review(limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0),
                session: Session = Depends(get_session), _who: Principal = Depends(require("label"))) -> dict:
    return review_queue(session, limit, offset)

"""/v1/review: the curators' queue of predictions that need a human look, least confident first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.dependencies import Principal, SessionDep, require
from api.errors import AUTH_ERRORS, documented
from services.curation.schemas import ReviewPage
from services.curation.service import MAX_PAGE, review_queue

router = APIRouter(prefix="/v1/review", tags=["curation"])


@router.get("", response_model=ReviewPage, responses=documented(*AUTH_ERRORS, 404, 422))
def list_review(session: SessionDep, _who: Annotated[Principal, Depends(require("label"))],
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50, offset: Annotated[int, Query(ge=0)] = 0,
                needs_review: Annotated[bool, Query(description="true: predictions that need review (low "
                                                    "confidence or out of distribution); false: the confident "
                                                    "ones, for spot checks")] = True,
                category: Annotated[str | None, Query(description="the predicted category")] = None,
                model_version: Annotated[str | None, Query(description="default: the active model")] = None,
                ood: Annotated[bool | None, Query(description="only out-of-distribution (true) or "
                                                  "in-distribution (false) predictions")] = None,
                unlabelled: Annotated[bool, Query(description="false: include images a curator labelled")] = True,
                ) -> ReviewPage:
    """Predictions with no human label, least confident first, with their top-3 categories and scale."""
    return review_queue(session, limit, offset, needs_review, category, model_version, ood, unlabelled)

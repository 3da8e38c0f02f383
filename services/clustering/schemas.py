"""The clustering domain's contracts: the clustering job's parameters and the subcategory tree."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from services.data.categories import NAMES
from services.types import UtcDateTime

Method = Literal["single", "complete", "centroid", "ward", "density_peaks"]


class ClusteringParams(BaseModel):
    """Parameters of a clustering run (the ``clustering`` job, ``semtag cluster``); defaults are the paper's."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"scale_min_nm": 1000, "scale_max_nm": 2000, "output": "logits", "within": "category", "method": "ward",
         "k": 5}]})

    scale_min_nm: float | None = Field(1000.0, gt=0, allow_inf_nan=False,
                                       description="smallest scale bar in nm (included); null: no lower bound")
    scale_max_nm: float | None = Field(2000.0, gt=0, allow_inf_nan=False,
                                       description="upper bound of the scale bar in nm, excluded as in the scale bins "
                                       "([min, max): 1000–2000 is the 1 µm–2 µm bin); null: no upper bound")
    output: Literal["logits", "features"] = Field("logits", description="the model output clustered")
    within: Literal["category", "all"] = Field("category", description="cut within each category, or over all")
    method: Method = Field("ward", description="the method whose hierarchy becomes the subcategories")
    k: int = Field(5, ge=1, description="subcategories per category (or in all)")
    methods: list[Method] = Field(default_factory=lambda: list(get_args(Method)),
                                  min_length=1, description="methods analysed and scored")
    autoencoder: bool = True
    code_dim: int | None = Field(10, ge=1, description="autoencoder code size; null: the ID estimate")
    complete_sample: int | None = Field(None, ge=2, description="run complete linkage on this many points")
    complete_budget_mb: int = Field(2048, ge=1, description="memory budget of complete linkage")
    dp_k: int = Field(30, ge=2, description="neighbours of the density-peaks density estimate")
    ae_epochs: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _range(self) -> ClusteringParams:
        if self.scale_min_nm and self.scale_max_nm and self.scale_min_nm > self.scale_max_nm:
            raise ValueError("scale_min_nm is above scale_max_nm")
        return self


class SubcategoryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    parent_category: str | None = None
    method: str
    k: int
    index: int
    size: int
    representatives: list[int] = Field(description="medoid image ids")
    run_id: int | None = None
    created_at: UtcDateTime | None = None
    named_by: str | None = Field(None, description="the curator who named it (null: the generated name)")
    named_at: UtcDateTime | None = None
    name_inherited_from: int | None = Field(None, description="the earlier run's subcategory whose name it kept "
                                            "(members overlap with Jaccard >= 0.5)")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def parent_category_name(self) -> str | None:
        return NAMES.get(self.parent_category) if self.parent_category else None


class SubcategoryTree(BaseModel):
    run_id: int | None
    subcategories: list[SubcategoryRead]
    tree: dict[str, list[int]] = Field(description="category slug → subcategory ids")
    categories: list[str]


class SubcategoryMember(BaseModel):
    id: int
    filename: str
    category: str | None = None
    pixel_size_nm: float | None = None


class SubcategoryDetail(SubcategoryRead):
    members: list[SubcategoryMember]
    next_cursor: int | None = None


class RenameRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "vertical arrays"}]})

    name: str = Field(min_length=1, max_length=256, description="the new name (at most 128 characters once "
                      "spaces are collapsed)")

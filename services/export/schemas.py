"""The typed contracts of the metadata formats, as the API declares them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class KitSemConformance(BaseModel):
    schema_: str = Field(alias="schema", serialization_alias="schema")
    valid: bool = Field(description="true when the document meets every rule of the schema, `required` included")
    missing_required: list[str] = Field(description="required fields semtag could not read (left out, never "
                                                    "invented), as dotted paths")
    supplied: dict[str, str] = Field(description="required fields no instrument records, filled with the "
                                                 "schema's neutral choice, and why")

    model_config = ConfigDict(populate_by_name=True)


class KitSemExtension(BaseModel):
    """semtag's own results beside the schema's `entry` (the schema's root allows it)."""

    model_config = ConfigDict(extra="allow")

    image: dict[str, Any]
    scale: dict[str, Any] | None = None
    classification: dict[str, Any] | None = None
    human_label: dict[str, Any] | None = None
    subcategory: dict[str, Any] | None = None
    acquisition_outside_schema: dict[str, Any] = Field(description="acquisition fields the schema has no field "
                                                                   "for (magnification) or as recorded")
    conformance: KitSemConformance


class KitSemDocument(BaseModel):
    """A KIT Data Manager SEM schema document (`entry`, JSON Schema draft 2019-09) with semtag's results."""

    entry: dict[str, Any] = Field(description="the schema's `entry`: what the instrument recorded, as semtag read it")
    semtag: KitSemExtension


class JsonLdDocument(BaseModel):
    """A JSON-LD document (schema.org terms in the RO-Crate 1.3 context)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    context: Any = Field(alias="@context", serialization_alias="@context")
    type: str | list[str] | None = Field(None, alias="@type", serialization_alias="@type")
    id: str | None = Field(None, alias="@id", serialization_alias="@id")


class RoCrateMetadata(BaseModel):
    """An RO-Crate metadata file (`ro-crate-metadata.json`): a flattened JSON-LD `@graph`."""

    model_config = ConfigDict(populate_by_name=True)

    context: Any = Field(alias="@context", serialization_alias="@context")
    graph: list[dict[str, Any]] = Field(alias="@graph", serialization_alias="@graph")

"""A record's ``ro-crate-metadata.json``, built with ro-crate-py (``rocrate``).

The crate describes the record's images as data entities (``File`` and ``ImageObject``) whose ``@id`` is
the file name under which the record holds them, so the repository can lay the metadata file beside the
images (two different images with one name get the image id as a prefix). semtag's findings are
``PropertyValue`` contextual entities linked by ``additionalProperty``, and one ``CreateAction`` whose
``instrument`` is semtag (a ``SoftwareApplication``) records where they came from. The root dataset
carries no licence: semtag does not know the record's; the repository adds it.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from services.export.jsonld import image_iri, properties
from services.images.schemas import ImageDetail

CRATE_SPEC = "https://w3id.org/ro/crate/1.3"
SEMTAG_ID = "#semtag"


def _version() -> str:
    try:
        return metadata.version("semtag")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def record_crate(record_id: str, versions: list[str | None], details: list[ImageDetail]) -> dict[str, Any]:
    """The RO-Crate metadata (a JSON-LD document) of the record's images and semtag's findings."""
    from rocrate.model.contextentity import ContextEntity
    from rocrate.rocrate import ROCrate

    crate = ROCrate()
    crate.name = f"Record {record_id}"
    crate.description = f"SEM images of record {record_id} with the scale, category and subcategory semtag found"
    crate.root_dataset["identifier"] = record_id
    named = [v for v in versions if v]
    if named:
        crate.root_dataset["version"] = named if len(named) > 1 else named[0]
    software = crate.add(ContextEntity(crate, SEMTAG_ID, properties={
        "@type": "SoftwareApplication", "name": "semtag", "version": _version(),
        "description": "scale reading, classification and subcategories for SEM images"}))
    names: set[str] = set()
    files, results = [], []
    for d in details:
        img = d.image
        path = img.filename if img.filename not in names else f"{img.id}-{img.filename}"
        names.add(path)
        values = []
        for pv in properties(d):
            refs = pv.pop("valueReference", None) or []
            pv_id = f"#image-{img.id}-{pv['propertyID']}"
            value = crate.add(ContextEntity(crate, pv_id, properties=pv))
            if refs:  # RO-Crate is flat: nested values become entities of their own
                value["valueReference"] = [crate.add(ContextEntity(crate, f"{pv_id}-{m}", properties=ref))
                                           for m, ref in enumerate(refs)]
            values.append(value)
        fmt = {"TIFF": "image/tiff", "PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp"}
        entity = crate.add_file(None, dest_path=path, properties={
            "@type": ["File", "ImageObject"], "name": img.filename, "identifier": [str(img.id), image_iri(img.sha256)],
            "sha256": img.sha256, "contentSize": str(img.bytes), "encodingFormat": fmt.get(img.format, img.format),
            "width": f"{img.width} px", "height": f"{img.height} px"})
        entity["additionalProperty"] = values
        files.append(entity)
        results.extend(values)
    if files:
        action = crate.add(ContextEntity(crate, "#semtag-analysis", properties={
            "@type": "CreateAction", "name": "semtag's analysis of the record's images"}))
        action["instrument"] = software
        action["object"] = files
        action["result"] = results
    return crate.metadata.generate()

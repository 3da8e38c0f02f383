"""Metadata out, in schemas others read: one image (or record) as a document, and bulk export.

- ``kit_sem``: the KIT Data Manager SEM schema (``resources/SEM_schema.json``), semtag's own results
  beside its ``entry`` under ``semtag``
- ``jsonld``: schema.org ``ImageObject`` / ``Dataset`` with ``additionalProperty`` values, in the
  bundled RO-Crate 1.3 context (``document_loader`` serves it: nothing is fetched)
- ``crate``: a record's ``ro-crate-metadata.json``, built with ro-crate-py
- ``formats``: one entry point, ``document(detail, fmt)``, for the API, the CLI and events
- ``bulk``: NDJSON and CSV over the image search's filters, page by page (bounded memory)
"""

"""/v1/webhooks/ingest: the repository tells us about a new file (HMAC-signed: X-Semtag-* or Standard Webhooks)."""

from __future__ import annotations

import json
import tempfile
from typing import IO

import anyio
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api.dependencies import RuntimeDep
from api.errors import documented, error_body
from api.webhooks.schemas import IngestAccepted, IngestPayload
from services.access.webhook import (
    SignedBody,
    check_request,
    claim_delivery,
    decode_base64_into,
    fetch_into,
    record_reply,
    release_delivery,
)
from services.errors import BadInput, PayloadTooLarge, SemtagError
from services.images.ingest import ingest_file
from services.images.schemas import RecordRef
from services.runtime import Runtime
from services.storage import BlobWriter

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


async def _read_signed_body(request: Request, check: SignedBody, limit: int) -> IO[bytes]:
    """The body, spooled to disk past 1 MiB and fed to the HMAC as it arrives; verified before anything
    reads it, so an unauthenticated request costs at most that much memory."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"webhook body exceeds {limit} bytes")
    body = tempfile.SpooledTemporaryFile(max_size=1 << 20)
    try:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"webhook body exceeds {limit} bytes")
            check.update(chunk)
            body.write(chunk)
        check.verify()
    except BaseException:
        body.close()
        raise
    body.seek(0)
    return body


def _ingest(rt: Runtime, payload: IngestPayload) -> IngestAccepted:
    s = rt.settings
    writer: BlobWriter = rt.store.new_writer(s.max_upload_bytes)
    sidecar: BlobWriter | None = None
    try:
        if payload.content_base64 is not None:
            decode_base64_into(payload.content_base64, writer)
        elif payload.url is not None:
            token = payload.bearer_token.get_secret_value() if payload.bearer_token is not None else None
            fetch_into(payload.url, writer, s.webhook_url_allowlist, s.webhook_fetch_timeout_s, bearer_token=token)
        if payload.sidecar_base64:
            sidecar = rt.store.new_writer(1024 * 1024)
            decode_base64_into(payload.sidecar_base64, sidecar)
            sidecar.close()
        filename = payload.filename or (payload.url.rsplit("/", 1)[-1].split("?")[0] if payload.url else None)
        res = ingest_file(rt, writer, filename, payload.record_id, sidecar, payload.record_version)
        return IngestAccepted(id=res.image_id, sha256=res.sha256, filename=res.filename, status=res.status,
                              duplicate=res.duplicate, record_id=res.record_id, record_version=res.record_version,
                              record_added=res.record_added,
                              records=[RecordRef(record_id=r, record_version=v) for r, v in res.records or []])
    finally:
        writer.discard()
        if sidecar is not None:
            sidecar.discard()


@router.post("/ingest", status_code=202, response_model=IngestAccepted,
             responses=documented(401, 413, 415, 422, 503),
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": IngestPayload.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def ingest_webhook(request: Request, rt: RuntimeDep) -> IngestAccepted | JSONResponse:
    """The repository's ingest webhook, HMAC-signed with the shared secret: `X-Semtag-Timestamp` and
    `X-Semtag-Signature: sha256=<hex>`, or the Standard Webhooks headers `webhook-id`, `webhook-timestamp` and
    `webhook-signature: v1,<base64>`. A replay inside the signature window (the same signature, or the same
    `webhook-id`) gets the first reply with `X-Semtag-Replay: true`."""
    s = rt.settings
    # the headers first: a stale or unsigned request reads no body
    check, key = check_request(s.webhook_secret, request.headers, s.webhook_max_skew_s)
    # base64 inflates by 4/3; leave room for the JSON around it
    body = await _read_signed_body(request, check, s.max_upload_bytes * 4 // 3 + 64 * 1024)
    try:
        with body:
            data = await run_in_threadpool(json.load, body)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an integer too long to convert
        raise BadInput(f"request body is not valid JSON: {exc}", "malformed_json") from None
    except RecursionError:
        raise BadInput("request body is nested too deeply", "malformed_json") from None
    try:
        payload = IngestPayload.model_validate(data)
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise BadInput(msg, "invalid_request") from None
    first = await run_in_threadpool(claim_delivery, rt, key, s.webhook_max_skew_s, s.webhook_fetch_timeout_s + 60)
    if first is not None:  # a replay inside the window: the first reply, nothing processed again
        return JSONResponse(first[1], status_code=first[0], headers={"X-Semtag-Replay": "true"})
    try:
        accepted = await run_in_threadpool(_ingest, rt, payload)
    except SemtagError as exc:
        with anyio.CancelScope(shield=True):  # the record must be written even if the client went away
            if exc.status >= 500 or exc.code == "fetch_failed":  # outages and unreachable hosts: retry anew
                await run_in_threadpool(release_delivery, rt, key)
            else:
                await run_in_threadpool(record_reply, rt, key, exc.status, error_body(exc.code, exc.message))
        raise
    except BaseException:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(release_delivery, rt, key)
        raise
    await run_in_threadpool(record_reply, rt, key, 202, accepted.model_dump(mode="json"))
    return accepted

"""A semtag over HTTP as a backfill target (``semtag ingest --api URL --key KEY``).

Outages are waited out as the service asks: a 503 (database or queue down, ``SECURITY.md``) is tried
again after its ``Retry-After``, a connection that fails or times out after an exponential backoff with
jitter, both up to ``retries`` times. An upload is safe to repeat: the same bytes give the same image.
413, 415, 422 and 400 are final for the file (its error code is reported); 401 and 403 stop the run.
"""

from __future__ import annotations

import json
import mimetypes
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from services.errors import SemtagError
from services.images.backfill import ArchiveItem, Sent, TargetUnusable
from services.images.schemas import LookupResponse

RETRY_STATUSES = frozenset({502, 503, 504})
MAX_WAIT_S = 300.0


class Refused(SemtagError):
    """The service refused the file; ``code`` and ``status`` are its own."""


def retry_after(value: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped at MAX_WAIT_S."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    return max(0.0, min(MAX_WAIT_S, seconds))


def _error_of(resp: httpx.Response) -> tuple[str, str]:
    """The error code and message of a refusal: the item's for an upload, else the envelope's."""
    try:
        body = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"http_{resp.status_code}", resp.text[:200] or resp.reason_phrase
    items = body.get("items") if isinstance(body, dict) else None
    if items and isinstance(items[0], dict) and items[0].get("error"):
        err = items[0]["error"]
        return str(err.get("code")), str(err.get("message"))
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("code")), str(err.get("message"))
    return f"http_{resp.status_code}", str(body)[:200]


class RemoteTarget:
    def __init__(self, url: str, key: str, *, retries: int = 8, backoff_s: float = 1.0, timeout_s: float = 120.0,
                 client: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"}
        self.retries, self.backoff_s, self.sleep = retries, backoff_s, sleep
        self.client = client or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0),
                                             limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))
        self.description = self.base

    def _request(self, method: str, path: str, make: Callable[[], dict[str, Any]]) -> httpx.Response:
        """The response once it is not an outage; ``make`` builds the request's content anew for each try
        (files are opened again)."""
        last = "no attempt"
        for attempt in range(self.retries + 1):
            wait = min(60.0, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
            try:
                kwargs = make()
                try:
                    resp = self.client.request(method, self.base + path, headers=self.headers, **kwargs)
                finally:
                    for _name, f in (kwargs.get("files") or []):
                        f[1].close()
            except httpx.TransportError as exc:  # refused, reset, timed out: the service may be restarting
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code not in RETRY_STATUSES:
                    return resp
                code, message = _error_of(resp)
                last = f"{resp.status_code} {code}: {message}"
                wait = retry_after(resp.headers.get("Retry-After"), wait)
            if attempt < self.retries:
                self.sleep(wait)
        # every later file would wait the same way: the run stops, and the next one resumes
        raise TargetUnusable(f"{self.base} stayed unavailable after {self.retries + 1} tries ({last})")

    def _check(self, resp: httpx.Response) -> None:
        if resp.status_code in (401, 403):
            code, message = _error_of(resp)
            raise TargetUnusable(f"{self.base} refused the key ({resp.status_code} {code}): {message}")
        if resp.status_code in (404, 405) and resp.request.url.path.endswith("/lookup"):
            raise TargetUnusable(f"{self.base} has no POST /v1/images/lookup: upgrade that semtag")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A JSON request to the API with the outage retries; its JSON reply, or a :class:`Refused`
        with the service's code (:class:`TargetUnusable` for 401/403)."""
        resp = self._request(method, path, lambda: {"json": body} if body is not None else {})
        self._check(resp)
        if resp.status_code >= 400:
            code, message = _error_of(resp)
            err = Refused(message, code)
            err.status = resp.status_code
            raise err
        return resp.json()

    def lookup(self, sha256s: list[str]) -> LookupResponse:
        resp = self._request("POST", "/v1/images/lookup", lambda: {"json": {"sha256": sha256s}})
        self._check(resp)
        if resp.status_code != 200:
            code, message = _error_of(resp)
            raise TargetUnusable(f"the lookup failed ({resp.status_code} {code}): {message}")
        return LookupResponse.model_validate(resp.json())

    def send(self, item: ArchiveItem) -> Sent:
        def make() -> dict[str, Any]:
            files = [("file", (item.path.name, open(item.path, "rb"), _mime(item.path.name)))]
            if item.sidecar is not None:
                files.append(("sidecar", (item.sidecar.name, open(item.sidecar, "rb"), "text/plain")))
            data = {k: v for k, v in (("record_id", item.record_id), ("record_version", item.record_version)) if v}
            return {"files": files, "data": data}

        resp = self._request("POST", "/v1/images", make)
        self._check(resp)
        if resp.status_code == 202:
            it = resp.json()["items"][0]
            if it.get("error"):  # accepted requests carry one item per file; ours has one file
                raise Refused(it["error"]["message"], it["error"]["code"])
            return Sent(int(it["id"]), bool(it.get("duplicate")), bool(it.get("record_added")))
        code, message = _error_of(resp)
        err = Refused(message, code)
        err.status = resp.status_code
        raise err

    def close(self) -> None:
        self.client.close()


def _mime(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"

"""Slow clients against a real `semtag serve` (issue 12, point 6): headers that trickle in, a body that
stalls, and idle kept-alive connections are all cut off by their deadlines, while other clients are
served meanwhile."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("slow")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMTAG_")}
    env.update({"SEMTAG_DATA_DIR": str(tmp / "var"), "SEMTAG_HTTP_HEADER_TIMEOUT_S": "1",
                "SEMTAG_HTTP_BODY_IDLE_TIMEOUT_S": "1", "SEMTAG_HTTP_KEEP_ALIVE_S": "1"})
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "semtag", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError((tmp / "serve.log").read_text())
        time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=15)
    return s


def _closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(the server closed the connection within ``seconds``, what it sent before closing)."""
    s.settimeout(0.2)
    got = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            chunk = s.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_trickling_headers_are_cut_off_while_others_are_served(server: str) -> None:
    clients = []
    for _ in range(20):
        s = _connect(server)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        clients.append(s)
    started = time.monotonic()
    for _ in range(3):  # one more header byte now and then: each arrives well inside 1 s
        for s in clients:
            try:
                s.sendall(b"X")
            except OSError:
                pass
        assert httpx.get(server + "/healthz", timeout=5).status_code == 200  # the server still serves
        time.sleep(0.3)
    results = [_closed_within(s, 15) for s in clients]
    elapsed = time.monotonic() - started
    assert all(closed for closed, _ in results), "a trickling client kept its connection"
    assert elapsed < 20  # 20 connections held for 60 s before; now about the 1 s deadline each
    sent = results[0][1]
    assert sent.startswith(b"HTTP/1.1 408")
    body = json.loads(sent.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout"
    for s in clients:
        s.close()


def test_a_stalled_body_is_cut_off(server: str) -> None:
    s = _connect(server)
    s.sendall(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nokey\r\n"
              b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
    closed, _ = _closed_within(s, 15)
    s.close()
    assert closed


def test_a_complete_request_is_not_cut_off_and_idle_keep_alive_ends(server: str) -> None:
    s = _connect(server)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    closed, got = _closed_within(s, 15)  # answered, then closed once idle past the 1 s keep-alive
    s.close()
    assert got.startswith(b"HTTP/1.1 200") and closed
    assert b"408" not in got

"""The webhook's URL allow-list matches scheme, host and port, refuses internal addresses unless an entry
names them, and the fetch connects to the address that was checked."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from semtag.settings import Settings
from services.access.webhook import AllowEntry, check_url_allowed
from services.errors import BadInput
from tests.access.conftest import SECRET
from tests.access.test_webhook import post
from tests.conftest import Client


@pytest.mark.parametrize("entries,url,allowed", [
    (["localhost"], "http://localhost:8080/x", False),               # no port in the entry: the default only
    (["files.example.org"], "https://files.example.org/x", True),
    (["files.example.org"], "https://files.example.org:8443/x", False),
    (["https://files.example.org"], "http://files.example.org/x", False),  # the scheme must match too
    (["files.example.org:8443"], "https://files.example.org:8443/x", True),
    (["files.example.org:*"], "http://files.example.org:1234/x", True),
    (["other.example.org"], "https://files.example.org/x", False),
])
def test_entries_match_scheme_host_and_port(entries: list[str], url: str, allowed: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: [(2, 1, 6, "", ("93.184.215.14", 0))])
    if allowed:
        assert check_url_allowed(url, entries).address == "93.184.215.14"
    else:
        with pytest.raises(BadInput) as e:
            check_url_allowed(url, entries)
        assert e.value.code == "url_not_allowed"


@pytest.mark.parametrize("resolved", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "192.168.0.7",
                                      "100.100.100.200", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:a01:203::1"])
def test_internal_addresses_need_an_explicit_entry(resolved: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: [(2, 1, 6, "", (resolved, 0))])
    with pytest.raises(BadInput) as e:
        check_url_allowed("https://files.example.org/x", ["files.example.org"])
    assert e.value.code == "url_not_allowed" and "internal" in e.value.message
    pinned = check_url_allowed("https://files.example.org/x", [f"files.example.org={resolved}"])
    assert ipaddress.ip_address(pinned.address) == ipaddress.ip_address(resolved)
    assert pinned.host == "files.example.org"


def test_entry_syntax() -> None:
    assert AllowEntry.parse("HTTPS://Files.Example.org:8443/") == AllowEntry("https", "files.example.org", 8443)
    assert AllowEntry.parse("lab-files:*=10.0.0.9") == AllowEntry(None, "lab-files", -1, "10.0.0.9")


def test_the_fetch_connects_to_the_checked_address_without_a_second_lookup(tmp_path: Path,
                                                                           file_host: SimpleNamespace) -> None:
    """'files.invalid' resolves nowhere: the file still arrives, from the pinned address, with its Host name."""
    port = file_host.port
    c = Client(Settings(data_dir=tmp_path / "var", webhook_secret=SECRET,
                        webhook_url_allowlist=[f"http://files.invalid:{port}=127.0.0.1"]))
    try:
        r = post(c, json.dumps({"record_id": "r", "url": f"http://files.invalid:{port}/a.tif"}).encode())
        assert r.status_code == 202, r.text
        assert file_host.hits == [("/a.tif", f"files.invalid:{port}")]
    finally:
        c.close()


def test_host_header_and_tls_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: [(10, 1, 6, "", ("2606:4700::1111", 0, 0, 0))])
    t = check_url_allowed("https://files.example.org:443/x?y=1", ["files.example.org"])
    assert (t.url, t.host, t.host_header) == ("https://[2606:4700::1111]:443/x?y=1", "files.example.org",
                                              "files.example.org")
    t = check_url_allowed("http://[2606:4700::1111]:8080/x", ["[2606:4700::1111]:8080"])
    assert (t.host, t.host_header) == ("2606:4700::1111", "[2606:4700::1111]:8080")

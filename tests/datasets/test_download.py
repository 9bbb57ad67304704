"""datasets/download.py: cache dir, checksums, unreachable URLs, progress-bar download."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import urllib.error
from pathlib import Path

import pytest

from recstack.datasets import download as dl
from recstack.errors import DownloadError

PAYLOAD = b"recstack test payload\n" * 1000


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/www that counts GET requests."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.bin").write_bytes(PAYLOAD)
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(dl.CACHE_ENV, str(tmp_path / "c"))
    assert dl.cache_dir() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()
    monkeypatch.delenv(dl.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dl.cache_dir() == tmp_path / "home" / ".cache" / "recstack"


def test_download_verifies_and_caches(server, tmp_path):
    base, hits = server
    dest = tmp_path / "out" / "data.bin"
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    assert dl.download(f"{base}/data.bin", dest, md5=md5) == dest
    assert dest.read_bytes() == PAYLOAD
    assert len(hits) == 1
    # cached with a matching checksum: no second request
    dl.download(f"{base}/data.bin", dest, md5=md5)
    dl.download(f"{base}/data.bin", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert len(hits) == 1
    assert not list(dest.parent.glob("*.part"))


def test_stale_cached_file_is_downloaded_again(server, tmp_path):
    base, hits = server
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"old")
    dl.download(f"{base}/data.bin", dest, md5=hashlib.md5(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD and len(hits) == 1


def test_checksum_mismatch_deletes_and_explains(server, tmp_path):
    base, _ = server
    dest = tmp_path / "data.bin"
    wrong = "0" * 32
    with pytest.raises(dl.ChecksumError) as exc:
        dl.download(f"{base}/data.bin", dest, md5=wrong)
    msg = _one_line(exc)
    assert f"{base}/data.bin" in msg
    assert wrong in msg and hashlib.md5(PAYLOAD).hexdigest() in msg
    assert "retry" in msg
    assert not dest.exists()
    assert not list(tmp_path.glob("*.part"))


def test_http_404_is_unreachable(server, tmp_path):
    base, _ = server
    with pytest.raises(dl.UnreachableError) as exc:
        dl.download(f"{base}/missing.zip", tmp_path / "missing.zip")
    assert "HTTP 404" in _one_line(exc)
    assert not (tmp_path / "missing.zip").exists()


def test_dns_failure_names_reason_and_fix(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(dl.urllib.request, "urlopen", fail)
    url = "https://files.example.invalid/data.zip"
    with pytest.raises(DownloadError) as exc:
        dl.download(url, tmp_path / "data.zip", md5="0" * 32)
    msg = _one_line(exc)
    assert url in msg and "DNS lookup failed for files.example.invalid" in msg
    assert "place it at" in msg  # the fix
    assert exc.value.reason.startswith("DNS lookup failed")
    assert not list(tmp_path.iterdir())


def test_connection_refused(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(dl.UnreachableError) as exc:
        dl.download(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", timeout=5)
    assert "refused" in _one_line(exc).lower()


def test_file_digest(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(PAYLOAD)
    assert dl.file_digest(f, "sha256") == hashlib.sha256(PAYLOAD).hexdigest()
    assert dl.matches_checksum(f)
    assert not dl.matches_checksum(Path(tmp_path / "nope"))

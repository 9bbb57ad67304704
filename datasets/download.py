"""Cached, checksummed downloads with a progress bar (stdlib urllib + rich).

`download(url, dest, md5=...)` returns `dest` at once when a cached copy has the expected
checksum, otherwise fetches `url` into a temp file beside `dest`, verifies it and renames it.
Every failure is a one-line `DownloadError` that names the URL and says what to do.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from recstack.errors import DownloadError
from recstack.progress import console

CACHE_ENV = "RECSTACK_CACHE"
_CHUNK = 1 << 20


class UnreachableError(DownloadError):
    """The server could not be reached or refused the file (DNS, connection, HTTP status).

    `reason` is a short human phrase ("DNS lookup failed for files.grouplens.org") that an
    offline fallback can quote.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class ChecksumError(DownloadError):
    """The downloaded (or cached) bytes do not have the pinned checksum."""


def cache_dir() -> Path:
    """Download cache: `$RECSTACK_CACHE`, else `~/.cache/recstack` (created on demand)."""
    env = os.environ.get(CACHE_ENV)
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "recstack"
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _expected(sha256: str | None, md5: str | None) -> tuple[str, str] | None:
    if sha256:
        return "sha256", sha256.lower()
    if md5:
        return "md5", md5.lower()
    return None


def matches_checksum(path: Path, sha256: str | None = None, md5: str | None = None) -> bool:
    """True when `path` exists and has the given checksum (or exists and no checksum is given)."""
    if not path.is_file():
        return False
    want = _expected(sha256, md5)
    return want is None or file_digest(path, want[0]) == want[1]


def _reason(exc: BaseException, url: str) -> str:
    """Short phrase for why `url` could not be fetched."""
    host = urllib.parse.urlsplit(url).hostname or url
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason} from {host}"
    inner = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(inner, socket.gaierror):
        return f"DNS lookup failed for {host} ({inner.strerror or inner})"
    if isinstance(inner, TimeoutError | socket.timeout):
        return f"timed out connecting to {host}"
    if isinstance(inner, ConnectionRefusedError):
        return f"connection refused by {host}"
    if isinstance(inner, ssl.SSLError):
        return f"TLS error with {host} ({inner.reason or inner})"
    if isinstance(inner, OSError) and inner.strerror:
        return f"{inner.strerror} ({host})"
    return f"{type(inner).__name__}: {inner} ({host})".replace("\n", " ")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 15,
) -> Path:
    """Fetch `url` to `dest` (atomically, via a temp file) and verify its checksum.

    A cached `dest` with the expected checksum (or any cached `dest` when no checksum is
    given) is returned without touching the network. Raises `UnreachableError` when the
    server cannot be reached and `ChecksumError` on a mismatch (the bad file is deleted).
    """
    dest = Path(dest)
    want = _expected(sha256, md5)
    if matches_checksum(dest, sha256, md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "recstack"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with _progress() as progress:
                        task = progress.add_task(f"download {dest.name}", total=total)
                        for block in iter(lambda: response.read(_CHUNK), b""):
                            out.write(block)
                            progress.advance(task, len(block))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = _reason(exc, url)
                raise UnreachableError(
                    f"cannot download {url}: {reason}; check the network or proxy "
                    f"(HTTPS_PROXY) and retry, or fetch the file by hand and place it at {dest}",
                    reason,
                ) from None
        if want is not None:
            got = file_digest(tmp, want[0])
            if got != want[1]:
                raise ChecksumError(
                    f"checksum mismatch for {url}: expected {want[0]} {want[1]}, got {got}; "
                    "the file was deleted: retry the download, and if it fails again the "
                    "upstream file changed (verify it by hand before trusting it)"
                )
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest

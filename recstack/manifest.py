"""Stage manifests: every stage directory carries `manifest.json` (docs/architecture.md §2).

A manifest records the schema version, the kind of directory, a sha256 per file, counts, the
config and the code version. Readers call `read_manifest`, which refuses a missing or corrupt
manifest, another kind, a newer schema, or files whose hashes do not match — each with a one-line
message saying what to do.
"""

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from recstack import __version__
from recstack.errors import DataError
from recstack.schema import MANIFEST_FILE, SCHEMA_VERSION

_CHUNK = 1 << 20
CONTENT_HASH = "content_hash"  # manifest key: hash of all file hashes


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def content_hash(files: dict[str, str]) -> str:
    """The manifest's `content_hash`: one sha256 over the {file: sha256} map."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def code_version() -> str:
    """Package version plus the git commit of the source tree, when there is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def write_manifest(directory: Path, kind: str, **fields: Any) -> dict:
    """Hash every file in `directory` (except the manifest) and write manifest.json."""
    files = {
        str(p.relative_to(directory)): file_sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "files": files,
        CONTENT_HASH: content_hash(files),
        **fields,
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def read_manifest(directory: Path, kind: str, verify: bool = True) -> dict:
    """Load and check a stage directory's manifest; raise DataError saying what to do."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise DataError(f"{directory} does not exist or is not a directory")
    if not path.is_file():
        raise DataError(
            f"{path} is missing: {directory} is not a finished {kind} directory "
            "(re-run the stage that writes it)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc}); re-run the stage that writes it"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        found = manifest.get("kind") if isinstance(manifest, dict) else None
        raise DataError(f"{directory} is a {found!r} directory, expected a {kind!r} directory")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise DataError(
            f"{directory} has schema version {version}, this recstack ({__version__}) reads "
            f"up to {SCHEMA_VERSION}: upgrade recstack or re-run the stage with this version"
        )
    if verify:
        for name, expected in manifest.get("files", {}).items():
            file = directory / name
            if not file.is_file():
                raise DataError(
                    f"{file} listed in {path} is missing; re-run the stage that writes it"
                )
            if file_sha256(file) != expected:
                raise DataError(
                    f"{file} does not match the hash in {path} (modified or corrupt); "
                    "re-run the stage that writes it"
                )
    return manifest

"""API keys with scopes, each for one kind of caller:

- `app`: recommend, similar, events, consent, onboarding (the product's backend);
- `models`: model updates, the experiment report, /metrics, readiness details (operators);
- `privacy`: a user's data export and erasure (the backend answering users' data requests);
- `admin`: all of the above.

So the service that answers data requests never holds the key that swaps models. Keys never
live in the repo or the config: they come from the environment,

    RECSTACK_APP_KEYS=key1,key2   RECSTACK_MODELS_KEYS=…   RECSTACK_PRIVACY_KEYS=…   RECSTACK_ADMIN_KEYS=…

or from a secret file named by RECSTACK_API_KEYS_FILE (JSON `{"app": [...], "privacy": [...],
…}`). The file is read again when it changes (checked at most once a second), so keys rotate
without a restart; a file that turns unreadable keeps the keys read last, with an error in the
log. Only sha256 digests are kept in memory and keys are compared in constant time; neither
keys nor request bodies are ever logged.
"""

import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from recstack.errors import RecstackError

APP, MODELS, PRIVACY, ADMIN = "app", "models", "privacy", "admin"
SCOPES = (APP, MODELS, PRIVACY, ADMIN)
KEYS_FILE_ENV = "RECSTACK_API_KEYS_FILE"
KEY_ENV = {scope: f"RECSTACK_{scope.upper()}_KEYS" for scope in SCOPES}
RELOAD_EVERY_S = 1.0
log = logging.getLogger("recstack.serving")
MIN_KEY_LENGTH = 16


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(key: str) -> str:
    """A key's name in counters (the rate limit): a digest prefix, never the key."""
    return _digest(key).hex()[:16]


def _file_stamp(file: str | None) -> tuple[float, int] | None:
    try:
        stat = os.stat(file) if file else None
    except OSError:
        return None
    return (stat.st_mtime, stat.st_size) if stat else None


@dataclass(frozen=True)
class ApiKeys:
    digests: dict[str, tuple[bytes, ...]]  # scope -> key digests
    file_stamp: tuple[float, int] | None = None  # the keys file's (mtime, size) when read
    checked_at: float = 0.0  # monotonic time of the last look at the file

    @classmethod
    def from_environment(cls) -> "ApiKeys":
        keys: dict[str, list[str]] = {scope: [] for scope in SCOPES}
        file = os.environ.get(KEYS_FILE_ENV)
        if file:
            try:
                data = json.loads(Path(file).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise RecstackError(
                    f"{KEYS_FILE_ENV}={file} is not a readable JSON file: {exc}"
                ) from None
            if not isinstance(data, dict) or set(data) - set(SCOPES):
                raise RecstackError(
                    f'{file} must be JSON {{"<scope>": [keys...]}} with scopes {list(SCOPES)}'
                )
            for scope in SCOPES:
                keys[scope] += [str(k) for k in data.get(scope, [])]
        for scope, env in KEY_ENV.items():
            keys[scope] += [k.strip() for k in os.environ.get(env, "").split(",") if k.strip()]
        short = [s for s, ks in keys.items() for k in ks if len(k) < MIN_KEY_LENGTH]
        if short:
            raise RecstackError(
                f"API keys must be >= {MIN_KEY_LENGTH} characters (scope {short[0]})"
            )
        if not any(keys.values()):
            raise RecstackError(
                f"no API keys: set {KEY_ENV[APP]} / {KEY_ENV[ADMIN]} or {KEYS_FILE_ENV} "
                "(e.g. RECSTACK_APP_KEYS=$(python -c 'import secrets; print(secrets.token_urlsafe(24))'))"
            )
        digests = {scope: tuple(_digest(k) for k in ks) for scope, ks in keys.items()}
        return cls(digests, _file_stamp(file), time.monotonic())

    def current(self) -> "ApiKeys":
        """These keys, or the keys file's new contents once it has changed (rotation)."""
        now = time.monotonic()
        if now - self.checked_at < RELOAD_EVERY_S:
            return self
        stamp = _file_stamp(os.environ.get(KEYS_FILE_ENV))
        if stamp == self.file_stamp:
            return ApiKeys(self.digests, self.file_stamp, now)
        try:
            keys = ApiKeys.from_environment()
        except RecstackError as exc:
            log.error("API keys not reloaded, keeping the previous ones: %s", exc)
            return ApiKeys(self.digests, stamp, now)
        log.warning("API keys reloaded from %s", os.environ.get(KEYS_FILE_ENV))
        return keys

    def scopes_of(self, key: str) -> set[str]:
        """The scopes a key grants (empty: unknown key). An admin key has them all."""
        digest = _digest(key)
        found = {
            s for s, ds in self.digests.items() if any(hmac.compare_digest(digest, d) for d in ds)
        }
        return set(SCOPES) if ADMIN in found else found

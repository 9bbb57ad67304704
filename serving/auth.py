"""API keys with two scopes: `app` (recommend, similar, events, consent, onboarding) and
`admin` (user data export and erasure, experiment report, /metrics, readiness details).

Keys never live in the repo or the config: they come from the environment,

    RECSTACK_APP_KEYS=key1,key2   RECSTACK_ADMIN_KEYS=key3

or from a secret file named by RECSTACK_API_KEYS_FILE (JSON `{"app": [...], "admin": [...]}`).
An admin key may call app endpoints too. Only sha256 digests are kept in memory and keys are
compared in constant time; neither keys nor request bodies are ever logged.
"""

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

from recstack.errors import RecstackError

APP, ADMIN = "app", "admin"
SCOPES = (APP, ADMIN)
KEYS_FILE_ENV = "RECSTACK_API_KEYS_FILE"
KEY_ENV = {APP: "RECSTACK_APP_KEYS", ADMIN: "RECSTACK_ADMIN_KEYS"}
MIN_KEY_LENGTH = 16


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class ApiKeys:
    digests: dict[str, tuple[bytes, ...]]  # scope -> key digests

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
                raise RecstackError(f'{file} must be JSON {{"app": [...], "admin": [...]}}')
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
        return cls({scope: tuple(_digest(k) for k in ks) for scope, ks in keys.items()})

    def scopes_of(self, key: str) -> set[str]:
        """The scopes a key grants (empty: unknown key). An admin key has both scopes."""
        digest = _digest(key)
        found = {
            s for s, ds in self.digests.items() if any(hmac.compare_digest(digest, d) for d in ds)
        }
        return found | {APP} if ADMIN in found else found

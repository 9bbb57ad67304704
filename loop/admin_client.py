"""The service's admin API as the loop uses it: what serves, publish, wait until every replica
swapped (docs/architecture.md §8, §9). Each failure is one RecstackError line."""

import time
from dataclasses import dataclass

import requests

from recstack.errors import RecstackError

MODELS = "/v1/admin/models"
REPORT = "/v1/experiments/report"
SIDES = ("retriever", "ranker")


@dataclass(frozen=True)
class Swap:
    """How a publication went: every replica serves it, or which replicas refused it."""

    ok: bool
    replicas: int
    problems: list[str]


class AdminClient:
    def __init__(self, url: str, key: str, timeout_s: float = 30.0) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def _call(self, method: str, body: dict | None = None, path: str = MODELS) -> dict:
        try:
            reply = self.session.request(method, self.url + path, json=body, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise RecstackError(
                f"the service at {self.url} does not answer ({type(exc).__name__}); start it "
                "or fix `service:` in the loop config"
            ) from None
        if reply.status_code in (401, 403):
            raise RecstackError(
                f"{self.url} refused the key ({reply.status_code}); give a models-scope key"
            )
        try:
            payload = reply.json()
        except ValueError:
            payload = {"error": reply.text[:200]}
        if reply.status_code >= 400:
            raise RecstackError(
                f"{method} {self.url}{path}: {reply.status_code} {payload.get('error', payload)}"
            )
        return payload

    def served(self) -> dict:
        """{"published": spec or None, "replicas": [...]} as GET /v1/admin/models returns it."""
        return self._call("GET")

    def experiment_report(self) -> dict:
        return self._call("GET", path=REPORT)

    def served_dirs(self, model: str) -> dict[str, str]:
        """side -> the artifact dir published for `model` (the config's until a publication)."""
        published = self.served().get("published") or {}
        dirs = {side: (published.get(side) or {}).get(model) for side in SIDES}
        missing = [side for side, path in dirs.items() if not path]
        if missing:
            raise RecstackError(
                f"{self.url} publishes no {model!r} model for {missing}; is it a recstack service "
                "whose replicas have started?"
            )
        return dirs

    def publish(self, model: str, dirs: dict[str, str]) -> int:
        body = {side: {model: dirs[side]} for side in SIDES}
        return int(self._call("POST", body)["generation"])

    def wait_swapped(
        self, model: str, generation: int, versions: dict[str, str], timeout_s: float
    ) -> Swap:
        """Poll until every replica follows `generation` and serves `versions` for `model`
        on the sides it serves; a replica reporting a load error for `model` there fails it."""
        deadline = time.monotonic() + timeout_s
        problems: list[str] = ["no replica reported"]
        while time.monotonic() < deadline:
            replicas = self.served()["replicas"]
            problems, waiting = [], False
            for replica in replicas:
                behind = (replica.get("generation") or 0) < generation
                for side, models in replica["models"].items():
                    if model not in models and model not in replica["errors"].get(side, {}):
                        continue
                    error = replica["errors"].get(side, {}).get(model)
                    if error and not behind:
                        problems.append(f"replica {replica['replica']} {side}: {error}")
                    elif behind or models.get(model) != versions[side]:
                        waiting = True
            if replicas and not waiting and not problems:
                return Swap(True, len(replicas), [])
            if problems and not waiting:
                return Swap(False, len(replicas), problems)
            time.sleep(0.5)
        late = problems or [f"not every replica swapped within {timeout_s:.0f} s"]
        return Swap(False, len(replicas), late)

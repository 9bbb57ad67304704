"""Named, hot-swappable models inside one replica.

A replica holds `{name: model}` loaded from `{name: artifact dir}`. `apply` loads every new or
changed dir first and swaps the dict in one assignment, so requests in flight finish on the
old model and the next ones see the new one; no request waits for a load. A dir that fails to
load (missing, corrupt, wrong vocab) is refused: that name keeps its previous model, and the
error is kept for /readyz and the reload response. After a swap the process's live objects
are frozen out of the garbage collector's scans (gc.freeze), as at replica start.
"""

import gc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from recstack.errors import RecstackError

Model = TypeVar("Model")
log = logging.getLogger("recstack.serving")


class UnknownModel(RecstackError):
    """A request names a model this replica does not serve."""


class ModelSlots(Generic[Model]):
    def __init__(self, load: Callable[[Path], Model]) -> None:
        self._load = load
        self.models: dict[str, Model] = {}
        self.paths: dict[str, str] = {}
        self.errors: dict[str, str] = {}  # name -> why its last requested dir was refused

    def apply(self, spec: dict[str, str]) -> dict[str, str]:
        """Load `{name: dir}`; returns the errors of this call (empty = all applied)."""
        models, paths, errors = dict(self.models), dict(self.paths), {}
        for name, path in spec.items():
            if paths.get(name) == str(path) and name in models:
                continue
            try:
                models[name] = self._load(Path(path))
                paths[name] = str(path)
            except RecstackError as exc:
                errors[name] = f"{path}: {exc}"
                log.error("model %s not loaded, keeping the previous one: %s", name, exc)
        for name in set(models) - set(spec):
            models.pop(name), paths.pop(name)
        self.models, self.paths, self.errors = models, paths, errors
        # a model lives until the next swap: keep its objects (vocabularies: millions of
        # strings for a large catalogue) out of the garbage collector's full scans
        gc.freeze()
        return errors

    def get(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise UnknownModel(f"model {name!r} is not loaded (loaded: {sorted(self.models)})")
        return model

"""Third-party console noise that says nothing about a run, silenced only around the calls that
print it: never a global filter, so recstack's own warnings and real errors still show.

- torch deprecates `LeafSpec`, which Lightning's CombinedLoader and the ONNX exporter still
  build (a FutureWarning on every fit and export).
- Lightning logs a litlogger/litmodels advertisement ("💡 Tip: …") when it builds a Trainer.
- The ONNX exporter logs "torchvision is not installed. Skipping torchvision::nms" (and three
  more ops) each time it builds its op registry; recstack exports no torchvision op.
"""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LEAF_SPEC = (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
LIGHTNING_TIP = "💡 Tip:"
ONNX_REGISTRY_LOG = "torch.onnx._internal.exporter._registration"


@contextmanager
def warnings_off(*filters: tuple[str, type[Warning]]) -> Iterator[None]:
    """Ignore warnings of (message regex, category) within the block only."""
    with warnings.catch_warnings():
        for message, category in filters:
            warnings.filterwarnings("ignore", message, category)
        yield


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextmanager
def log_lines_off(logger: str, prefix: str) -> Iterator[None]:
    """Drop `logger`'s records whose message starts with `prefix` within the block only."""
    drop, log = _DropPrefix(prefix), logging.getLogger(logger)
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


@contextmanager
def log_level(logger: str, level: int) -> Iterator[None]:
    """`logger` logs only records at `level` or above within the block."""
    log = logging.getLogger(logger)
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)

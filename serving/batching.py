"""One ONNX run per model for a batch of calls, with each call's failure kept to itself.

    grouped(calls, run) -> results in call order; a failed call's slot holds its exception

`@serve.batch` hands a deployment the calls of many clients at once. A batch that fails as a
whole is run again one call at a time, so one client's bad call fails alone and never the
calls batched with it; `unwrap` raises a call's own exception in that call's handler.
"""

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")
log = logging.getLogger("recstack.serving")


def grouped(
    calls: Sequence[tuple[str, Request]],
    run: Callable[[str, list[Request]], list[Result]],
) -> list[Result | Exception]:
    """Run `run(model, requests)` once per model named in `calls`; results in call order."""
    by_model: dict[str, list[int]] = defaultdict(list)
    for i, (model, _) in enumerate(calls):
        by_model[model].append(i)
    out: list[Result | Exception] = [None] * len(calls)  # type: ignore[list-item]
    for model, rows in by_model.items():
        requests = [calls[r][1] for r in rows]
        try:
            results: list = run(model, requests)
        except Exception as exc:
            if len(requests) > 1:
                log.warning(
                    "a batch of %d failed (%s); running its calls one by one", len(requests), exc
                )
            results = [_alone(run, model, request) for request in requests]
        for row, result in zip(rows, results, strict=True):
            out[row] = result
    return out


def _alone(run: Callable, model: str, request) -> object:
    try:
        return run(model, [request])[0]
    except Exception as exc:
        return exc


def unwrap(result: Result | Exception) -> Result:
    """A call's result, or its own exception raised."""
    if isinstance(result, Exception):
        raise result
    return result

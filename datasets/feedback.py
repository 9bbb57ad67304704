"""Which logged interaction types count as implicit positives (docs/architecture.md §9).

A spec is comma-separated terms: `TYPE=1` (counts), `TYPE=0` or leaving the type out (does not
count), and `rating>=X` (rating events count when their logged value, the event context's
`rating`, is at least X; a rating event without a numeric value does not count). Example:
`view=1,click=1,purchase=1,rating>=4`. Feedback is binary: there are no weights.
"""

import re
from dataclasses import dataclass

from recstack.errors import DataError
from recstack.event_log_format import INTERACTION_TYPES

RATING_TYPE = "rating"
_TERM = re.compile(r"^\s*([a-z_]+)\s*(?:(=)\s*([01])|(>=)\s*([-+0-9.eE]+))?\s*$")


@dataclass(frozen=True)
class Feedback:
    types: tuple[str, ...]  # in INTERACTION_TYPES order
    min_rating: float | None  # rating events count only with a value >= this; None = all

    def spec(self) -> str:
        """The canonical spec string (what the manifest records)."""
        terms = [
            f"{RATING_TYPE}>={self.min_rating:g}"
            if t == RATING_TYPE and self.min_rating is not None
            else f"{t}=1"
            for t in self.types
        ]
        return ",".join(terms)


def parse_feedback(spec: str | None, default_min_rating: float | None) -> Feedback:
    """`spec` as a Feedback; None: every interaction type, ratings >= `default_min_rating`."""
    if spec is None:
        return Feedback(INTERACTION_TYPES, default_min_rating)
    counted: set[str] = set()
    min_rating = None
    for term in spec.split(","):
        match = _TERM.match(term)
        if match is None:
            raise DataError(
                f"--feedback term {term.strip()!r} is not TYPE=1, TYPE=0 or rating>=X "
                "(e.g. view=1,click=1,purchase=1,rating>=4)"
            )
        kind, flag, threshold = match[1], match[3], match[5]
        if kind not in INTERACTION_TYPES:
            raise DataError(
                f"--feedback names {kind!r}, which is not an interaction type; use "
                f"{', '.join(INTERACTION_TYPES)}"
            )
        if threshold is not None:
            if kind != RATING_TYPE:
                raise DataError(f"--feedback: only rating takes a threshold, got {term.strip()!r}")
            try:
                min_rating = float(threshold)
            except ValueError:
                raise DataError(f"--feedback: {threshold!r} is not a number") from None
        if flag != "0":
            counted.add(kind)
    if not counted:
        raise DataError(f"--feedback {spec!r} counts no interaction type; name at least one")
    return Feedback(tuple(t for t in INTERACTION_TYPES if t in counted), min_rating)

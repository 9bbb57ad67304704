"""What a replica served lately: the share of the catalogue in its lists of the last window
(`recstack_served_coverage`, serving/metrics.py). A list that only ever shows the same few
items is a symptom the request counters do not show (docs/architecture.md §8)."""

import time
from collections import Counter, deque

WINDOW_S = 300.0


class ServedWindow:
    """Item ids of the lists served in the last `window_s` seconds, with their counts."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._lists: deque[tuple[float, list[str]]] = deque()
        self._counts: Counter[str] = Counter()

    def add(self, item_ids: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._lists.append((now, item_ids))
        self._counts.update(item_ids)
        while self._lists and self._lists[0][0] < now - self.window_s:
            _, old = self._lists.popleft()
            self._counts.subtract(old)
            for item in set(old):  # subtract() keeps zero counts: drop them
                if self._counts[item] <= 0:
                    del self._counts[item]

    def coverage(self, catalogue_size: int) -> float:
        """Distinct items served in the window over the catalogue's size (0 without one)."""
        return len(self._counts) / catalogue_size if catalogue_size else 0.0

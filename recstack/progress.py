"""Progress display for long CLI steps (rich): a spinner per step, then its time."""

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

console = Console(stderr=True)


class StepLog:
    """`with log.step("sort"): ...` shows a spinner, then `✓ sort  1.23 s`; keeps the timings."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        if self.quiet:
            yield
        else:
            with console.status(f"{name} …"):
                yield
        self.seconds[name] = round(time.perf_counter() - started, 3)
        if not self.quiet:
            console.print(f"[green]✓[/green] {name}  [dim]{self.seconds[name]:.2f} s[/dim]")

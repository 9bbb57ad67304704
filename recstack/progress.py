"""Progress display for long CLI steps (rich): a spinner per step, then its time."""

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

console = Console(stderr=True)


class StepLog:
    """`with log.step("sort"): ...` shows a spinner, then `✓ sort  1.23 s, peak RSS 310 MiB`; keeps the timings."""

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
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
            console.print(
                f"[green]✓[/green] {name}  [dim]{self.seconds[name]:.2f} s, peak RSS {peak_mib:.0f} MiB[/dim]"
            )

"""Progress display for long CLI steps (rich): a spinner or a bar per step, then its time."""

import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class StepLog:
    """`with log.step("sort"): ...` shows a spinner, then `✓ sort  1.23 s, peak RSS 310 MiB`.

    With `total=N` the step shows a bar instead and yields `advance()` to call N times;
    with `live=False` it shows nothing while it runs (for steps that draw their own progress,
    such as downloads: rich allows one live display at a time).
    The timings are kept in `seconds` (they go into reports).
    """

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(
        self, name: str, total: int | None = None, live: bool = True
    ) -> Iterator[Callable[[], None]]:
        started = time.perf_counter()
        if self.quiet or not live:
            yield lambda: None
        elif total is None:
            with console.status(f"{name} …"):
                yield lambda: None
        else:
            columns = (TextColumn(name), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task(name, total=total)
                yield lambda: progress.advance(task)
        self.seconds[name] = round(time.perf_counter() - started, 3)
        if not self.quiet:
            console.print(
                f"[green]✓[/green] {name}  "
                f"[dim]{self.seconds[name]:.2f} s, peak RSS {_peak_rss_mib():.0f} MiB[/dim]"
            )

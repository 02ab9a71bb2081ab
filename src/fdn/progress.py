r"""Progress of long commands: tqdm bars on a terminal, a plain line a minute in a log."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["INTERVAL", "ProgressLines", "progress", "progress_mode"]

INTERVAL = 60.0
"""Seconds between two lines (and before the first) in the "lines" mode."""


def progress_mode(progress: bool | str) -> str:
    """``"bar"``, ``"lines"`` or ``"off"``; True is ``"bar"`` and False ``"off"``, as before."""
    if isinstance(progress, bool):
        return "bar" if progress else "off"
    if progress not in ("bar", "lines", "off"):
        raise ValueError(f"progress must be a bool, 'bar', 'lines' or 'off', got {progress!r}")
    return progress


class ProgressLines:
    """The part of tqdm's interface our loops use, reporting by a line on stderr at most every
    ``interval`` seconds, never before the first: ``fdn eval: 340/2000 runs (17%), 8 min
    elapsed, about 40 min left``. At close, the final state is printed if a line was before.
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        unit: str = "it",
        label: str = "fdn",
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.unit, self.label = iterable, total, unit, label
        self.clock, self.interval = clock, INTERVAL if interval is None else interval
        self.n, self.lines, self.shown = 0, 0, 0
        self.start = self.last = clock()

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()
        self.close()

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def close(self) -> None:
        if self.lines and self.shown != self.n:
            self._print(self.clock())

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        """Ignored: the line names only the command."""

    set_postfix_str = set_description

    def _print(self, now: float) -> None:
        elapsed = now - self.start
        line = f"{self.label}: {self.n}"
        if self.total:
            line += f"/{self.total} {self.unit}s ({100 * self.n // self.total}%)"
        else:
            line += f" {self.unit}s"
        line += f", {_duration(elapsed)} elapsed"
        if self.total and 0 < self.n < self.total:
            line += f", about {_duration(elapsed * (self.total - self.n) / self.n)} left"
        print(line, file=sys.stderr, flush=True)
        self.lines, self.shown = self.lines + 1, self.n


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def progress(
    iterable: Iterable | None = None, *, mode: bool | str, label: str, **kwargs: Any
) -> Any:
    """A tqdm bar (``"bar"``), a disabled one (``"off"``), or :class:`ProgressLines`
    (``"lines"``, given ``total`` and ``unit`` from ``kwargs``; ``label`` starts its lines)."""
    mode = progress_mode(mode)
    if mode == "lines":
        return ProgressLines(iterable, kwargs.get("total"), kwargs.get("unit", "it"), label)
    return tqdm(iterable, disable=mode == "off", **kwargs)

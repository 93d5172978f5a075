"""Progress of a long run: a live bar (done, rate, ETA) when stdout is a
terminal, otherwise a plain line on stderr every few seconds, which logs and
CI keep readable and which never mixes into a report printed on stdout."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "events",
        *,
        interactive: bool | None = None,
        stream: TextIO | None = None,
        every_s: float = 2.0,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar: RichProgress | None = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        self.started = self._last_line = time.monotonic()
        if self.interactive:
            self._bar = _rich_bar(self.unit)
            if self._bar is not None:
                self._bar.start()
                self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        else:
            self._line(final=exc_type is None)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            self._line()

    def _line(self, final: bool = False) -> None:
        rate = self.rate
        total = max(self.total, self.done)
        share = f" ({100 * self.done / total:.1f}%)" if total else ""
        if final:
            tail = f"done in {_duration(time.monotonic() - self.started)}"
        else:
            eta = (total - self.done) / rate if rate > 0 else 0.0
            tail = f"ETA {_duration(eta)}"
        print(
            f"{self.label}: {self.done:,}/{total:,} {self.unit}{share}, "
            f"{rate:,.0f} {self.unit}/s, {tail}",
            file=self.stream,
            flush=True,
        )


def _rich_bar(unit: str) -> RichProgress | None:
    try:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            ProgressColumn,
            Task,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress
        from rich.text import Text
    except ImportError:  # without rich, the plain lines still report
        return None

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed or 0:,.0f} {unit}/s", style="progress.data.speed")

    return RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        Rate(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
    )

"""Progress display, mean ± std summaries and Markdown output shared by the experiment scripts."""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = [
    "RunProgress",
    "Section",
    "add_common_arguments",
    "fmt_mean_std",
    "machine_description",
    "markdown_table",
    "mean",
    "print_section",
    "progress_display",
    "set_single_thread",
]

console = Console(stderr=True)


@dataclass(frozen=True)
class Section:
    """One experiment's part of ``docs/experiments.md``: Markdown text and the wall time it took."""

    key: str
    title: str
    markdown: str
    wall_seconds: float


class RunProgress:
    """A rich progress display with one bar per run, advanced once per round."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    def run(self, description: str, rounds: int) -> Callable[[int], None]:
        """Add a bar for one run and return the callback that ``run_federated`` calls after each round."""
        if self._progress is None:
            return lambda _round: None
        task = self._progress.add_task(description, total=rounds)
        progress = self._progress
        return lambda _round: progress.advance(task)


@contextmanager
def progress_display(enabled: bool = True) -> Iterator[RunProgress]:
    """Show a progress display on stderr while the block runs; ``enabled=False`` shows nothing."""
    if not enabled:
        yield RunProgress(None)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        yield RunProgress(progress)


def set_single_thread() -> None:
    """Limit torch to one CPU thread, so a run shares a small machine with other work and timings are comparable."""
    torch.set_num_threads(1)


def mean(values: Sequence[float | None]) -> float | None:
    """Return the mean of the defined values, or None if none is defined."""
    defined = [float(value) for value in values if value is not None and not math.isnan(value)]
    return statistics.fmean(defined) if defined else None


def fmt_mean_std(values: Sequence[float | None], digits: int = 3) -> str:
    """Format values over seeds as ``mean ± std`` (sample std), noting how many seeds had no value."""
    defined = [float(value) for value in values if value is not None and not math.isnan(value)]
    if not defined:
        return "undefined"
    text = f"{statistics.fmean(defined):.{digits}f}"
    if len(defined) > 1:
        text += f" ± {statistics.stdev(defined):.{digits}f}"
    if len(defined) < len(values):
        text += f" ({len(values) - len(defined)} undefined)"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render a GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_description() -> str:
    """Describe the CPU, core count and library versions of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs; Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} thread), numpy {np.__version__}"
    )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--seeds``, ``--rounds`` and ``--quiet``, shared by every experiment script."""
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...) per setting; default 3")
    parser.add_argument("--rounds", type=int, default=None, help="federated rounds; default: each experiment's own")
    parser.add_argument("--quiet", action="store_true", help="hide the progress bars")


def print_section(section: Section) -> None:
    """Print a section's Markdown to stdout, rendered by rich."""
    Console().print(Markdown(section.markdown))

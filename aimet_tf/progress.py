"""One progress line per unit of work of a long job (AMP, AutoQuant): a bar, step k/n, what, score.

On a terminal the line is redrawn in place on stderr; otherwise (logs, CI) each step is its own
line. ``verbose=False`` sends the lines to absl logging instead.
"""

from __future__ import annotations

import sys

from absl import logging

__all__ = ["Progress"]


class Progress:
    """``Progress("AMP").show("phase 1", 3, 14, "conv1 at W4A8", 0.91)``."""

    def __init__(self, job: str, verbose: bool = True, width: int = 24):
        self.job = job
        self.verbose = verbose
        self.width = width
        self.tty = sys.stderr.isatty()

    def line(self, phase: str, step: int, total: int, what: str, score: float | None = None, cached: bool = False) -> str:
        done = int(self.width * step / max(total, 1))
        bar = "#" * done + "." * (self.width - done)
        score_text = "" if score is None else f": {score:.4f}"
        return f"{self.job} {phase} [{bar}] {step}/{total} {what}{score_text}{' (cached)' if cached else ''}"

    def show(self, phase: str, step: int, total: int, what: str, score: float | None = None, cached: bool = False) -> None:
        text = self.line(phase, step, total, what, score, cached)
        if not self.verbose:
            logging.info("%s", text)
            return
        sys.stderr.write(("\r" + text.ljust(110)) if self.tty else text + "\n")
        if self.tty and step == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

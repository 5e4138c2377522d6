"""Progress display: a live bar on a terminal, plain periodic lines elsewhere (CI, launch logs)."""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def _fmt_secs(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """``update(n, **info)`` advances by n units; info (loss, epoch, ...) is shown beside the bar.
    ``listener(progress)`` is called at most once a second and at the end, display or not (the
    master publishes it as a topic)."""

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None,
                 interval: float = 10.0, enabled: bool = True, listener: Callable[["Progress"], None] | None = None):
        self.total, self.desc, self.enabled = max(int(total), 1), desc, enabled
        self.listener, self._heard = listener, 0.0
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else interval
        self.done, self.start, self.last, self.info = 0, time.monotonic(), 0.0, {}

    def update(self, n: int = 1, **info) -> None:
        self.done += n
        self.info.update(info)
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.interval or self.done >= self.total):
            self.last = now
            self._render(now)
        if self.listener is not None and (now - self._heard >= 1.0 or self.done >= self.total):
            self._heard = now
            self.listener(self)

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0)

    def elapsed_eta(self, now: float | None = None) -> tuple[float, float]:
        elapsed = (time.monotonic() if now is None else now) - self.start
        frac = self.fraction
        return elapsed, (elapsed * (1 - frac) / frac if frac > 0 else 0.0)

    def line(self, now: float | None = None) -> str:
        elapsed, eta = self.elapsed_eta(now)
        frac = self.fraction
        extras = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.info.items())
        return (f"{self.desc} {100 * frac:5.1f}% {self.done}/{self.total} "
                f"[{_fmt_secs(elapsed)}<{_fmt_secs(eta)}] {extras}").strip()

    def _render(self, now: float) -> None:
        text = self.line(now)
        if self.tty:
            width = 24
            filled = int(width * min(self.done / self.total, 1.0))
            self.stream.write(f"\r{'#' * filled}{'.' * (width - filled)} {text}\x1b[K")
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

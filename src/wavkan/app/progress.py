"""The per-epoch progress bar: steps done, running training loss and samples/s.

The loss lives in device accumulators; reading it syncs the device, so the bar reads it at
most every ``refresh_s`` seconds and a fast GPU epoch is not slowed by a sync per step.
Without tqdm, when disabled, or when stderr is not a terminal (a log file, a pipe, a batch job)
it is silent: a bar redrawn with carriage returns is noise in a log; the per-epoch summary
lines say the same.
"""

from __future__ import annotations

import time

__all__ = ["EpochProgress"]


class EpochProgress:
    """``update(rows_done)`` after each step of an epoch of ``total_steps`` steps."""

    def __init__(self, total_steps: int, desc: str, totals, enabled: bool = True, refresh_s: float = 0.5):
        self.totals = totals
        self.refresh_s = refresh_s
        self.start = time.perf_counter()
        self.last_refresh = self.start
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                # disable=None: tqdm stays quiet when its stream (stderr) is not a terminal.
                bar = tqdm(total=total_steps, desc=desc, unit="step", dynamic_ncols=True, leave=True, disable=None)
                self.bar = None if bar.disable else bar

    def update(self, rows_done: int) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.perf_counter()
        if now - self.last_refresh >= self.refresh_s:
            self.last_refresh = now
            count = int(self.totals.count)
            loss = float(self.totals.loss_sum) / max(count, 1)
            rate = rows_done / max(now - self.start, 1e-9)
            self.bar.set_postfix_str(f"loss={loss:.4f} samples/s={rate:,.0f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

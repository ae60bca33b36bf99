"""Training output: progress bar, plain log lines off a terminal, loss curve and sample grids."""

from __future__ import annotations

import math
import time
from pathlib import Path

from rich.progress import TextColumn

from ..console import err_console, info, progress
from ..fsutil import atomic_path


class ProgressLog:
    """A rich bar (step, loss, it/s, ETA) on a terminal; a plain line every `every` steps otherwise."""

    def __init__(self, total: int, start: int, every: int, enabled: bool = True):
        self.total, self.every, self.enabled = total, max(1, every), enabled
        self.start_time, self.start_step = time.perf_counter(), start
        self.bar = None
        if enabled and err_console.is_terminal:
            self.bar = progress(TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} it/s"))
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, loss="-", rate="-")

    def rate(self, step: int) -> float:
        dt = time.perf_counter() - self.start_time
        return (step - self.start_step) / dt if dt > 0 else 0.0

    def update(self, step: int, loss: float | None) -> None:
        if not self.enabled:
            return
        shown = "-" if loss is None or math.isnan(loss) else f"{loss:.4f}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=shown, rate=f"{self.rate(step):.2f}")
        elif step % self.every == 0 or step == self.total:
            r = self.rate(step)
            eta = (self.total - step) / r if r > 0 else float("nan")
            info(f"step {step}/{self.total}  loss {shown}  {r:.2f} it/s  eta {eta:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def save_loss_curve(history: list[list[float]], path: Path, title: str = "") -> Path | None:
    """Per-step loss and its moving average, as a PNG (matplotlib, Agg backend)."""
    pts = [(s, v) for s, v in history if v is not None and not math.isnan(v)]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*pts)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
    w = max(1, len(losses) // 50)
    if w > 1:
        avg = [sum(losses[max(0, i - w + 1): i + 1]) / len(losses[max(0, i - w + 1): i + 1]) for i in range(len(losses))]
        ax.plot(steps, avg, lw=1.5, label=f"moving average ({w})")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss")
    ax.set_title(title or "training loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def save_grid(rows: list[list], path: Path) -> Path:
    """Rows of PIL images, all as long, as one PNG without gaps, every image at the first one's size."""
    from ..sampling.grid import write_contact_sheet

    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"grid rows differ in length: {[len(r) for r in rows]}")
    w, h = rows[0][0].size
    return write_contact_sheet([im for row in rows for im in row], path, cols=len(rows[0]), cell=max(w, h), pad=0)

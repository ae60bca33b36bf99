"""What `scedit analyze skips` is asked to do (`SkipAnalysisSettings`), checked without torch: a bad
option is answered before the model loads."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SceditError

MODES = ("zero", "mean")  # what replaces a removed skip


@dataclass
class SkipAnalysisSettings:
    steps: int = 25
    scheduler: str = "ddim"
    guidance_scale: float = 7.5
    seeds: tuple[int, ...] = (0,)
    modes: tuple[str, ...] = MODES
    batch_size: int = 8  # images per pipeline call (variants run side by side)
    map_steps: int | None = None  # timesteps shown in the feature-map grid (default: 4, at most `steps`)
    width: int | None = None
    height: int | None = None

    @property
    def shown_steps(self) -> int:
        return self.map_steps if self.map_steps is not None else min(4, self.steps)

    def validate(self) -> None:
        from ..sampling import SampleSettings  # steps, batch size, guidance and seeds: as `scedit sample` checks them

        SampleSettings(steps=self.steps, guidance_scale=self.guidance_scale, seeds=self.seeds,
                       batch_size=self.batch_size, width=self.width, height=self.height).validate()
        if self.map_steps is not None and not 1 <= self.map_steps <= self.steps:
            raise SceditError(f"--map-steps must be between 1 and --steps ({self.steps}), got {self.map_steps}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise SceditError(f"--mode {', '.join(bad) or '(none)'}: choose zero and/or mean")

"""What `scedit eval` is asked to measure (`EvalSettings`), apart from the measuring: checking it needs
neither torch nor the metrics' models, so a command line that asks for nothing, or names a recipe that is
not there, is answered before they load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SceditError


@dataclass
class EvalSettings:
    """What to measure and how (the options of `scedit eval`)."""

    recipe: Path | None = None  # training recipe (TOML) for params / memory / timing
    fid: bool = False
    control: bool = False
    params: bool = False
    memory: bool = False
    timing: bool = False
    generated: Path | None = None  # folder of generated images (a `scedit sample` output)
    reference: str | None = None  # FID reference: a folder, a `prepare` dataset folder, or a .npz of statistics
    inception_weights: Path | None = None
    dims: int = 2048
    batch_size: int = 50
    workers: int = 0
    stats_cache: Path | None = None
    use_cache: bool = True
    edge_tolerance: int = 0
    annotator_weights: Path | None = None
    pose_threshold: float = 0.05
    detect_resolution: int | None = None
    report_dir: Path | None = None  # controllability report folder; None: `default_report_dir(generated)`
    worst: int = 8
    device: str = "cpu"
    steps: int = 5
    warmup: int = 2
    batch: int | None = None
    resolution: int | None = None
    overrides: list[str] = field(default_factory=list)  # recipe overrides KEY=VALUE

    @property
    def measures_recipe(self) -> bool:
        return self.params or self.memory or self.timing

    def validate(self) -> None:
        if not (self.fid or self.control or self.measures_recipe):
            raise SceditError("nothing to evaluate: give --fid, --control, or --params/--memory/--time RECIPE")
        if self.fid and (self.generated is None or self.reference is None):
            raise SceditError("--fid needs --generated DIR and --reference DIR|DATASET|STATS.npz")
        if self.control and self.generated is None:
            raise SceditError("--control needs --generated FOLDER, the output folder of `scedit sample`")
        if (self.fid or self.control) and not Path(self.generated).expanduser().is_dir():
            raise SceditError(f"--generated {self.generated}: no such folder; pass the output folder of `scedit sample` "
                              "(or any folder of images for --fid)")
        if self.fid and not Path(self.reference).expanduser().exists():
            raise SceditError(f"--reference {self.reference}: no such folder or file; pass a folder of images, a "
                              "dataset folder or a .npz of FID statistics")
        if self.measures_recipe:
            if self.recipe is None:
                raise SceditError("--params/--memory/--time need a RECIPE (a training recipe TOML) as argument")
            if not Path(self.recipe).is_file():
                raise SceditError(f"{self.recipe}: no such recipe file")
            from ..recipes import load_recipe

            load_recipe(self.recipe, self.overrides)  # its mistakes too, before the measuring loads

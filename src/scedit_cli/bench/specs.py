"""The paper's efficiency tables as data: which methods each table compares, the paper's figures and
the ratios we mean to beat; the settings of a run and the shape of its results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import SceditError

GB = 1e9  # the paper's "G" (memory columns); our GiB figures are converted for the side-by-side


@dataclass(frozen=True)
class MethodSpec:
    label: str
    method: str
    config: dict
    paper_params_m: float | None = None
    paper_mem_gb: float | None = None
    paper_time_ratio: float | None = None
    paper_mem_ratio: float | None = None  # where the paper states a ratio but no figure
    train: dict = field(default_factory=dict)  # TrainSection overrides for this row (memory options)


@dataclass(frozen=True)
class Target:
    """`method`'s figure must be at most `max_ratio` x `versus`'s (the paper's ratio, which we mean to beat)."""

    method: str
    versus: str
    metric: str  # "memory" | "time"
    max_ratio: float


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    arch: str
    baseline: str
    methods: tuple[MethodSpec, ...]
    targets: tuple[Target, ...] = ()
    note: str = ""


_CANNY = {"conditions": ["canny"]}
_FF = {"recompute_feed_forward": True}

TABLES: dict[str, TableSpec] = {
    "table1": TableSpec(
        "table1", "Table 1: text-to-image tuning efficiency (SD 1.5)", "sd15", "Full",
        (
            MethodSpec("Full", "full", {}, 859.52, 53.46, 1.00),
            MethodSpec("LoRA r=64", "lora", {"rank": 64}, 23.94, 60.57, 1.24),
            MethodSpec("LoRA r=6", "lora", {"rank": 6}, 2.24, 59.94, 1.20),
            MethodSpec("SCEdit", "sc", {}, 19.68, 29.02, 0.78),
            MethodSpec("SCEdit ratio 10", "sc", {"ratio": 10}, 1.98, 28.06, 0.77),
            # Not in the paper: the feed-forward recompute (train.recompute_feed_forward) spends some of
            # a method's time on memory; both rows show what it buys SCEdit and LoRA.
            MethodSpec("SCEdit + FF recompute", "sc", {}, 19.68, train=_FF),
            MethodSpec("LoRA r=64 + FF recompute", "lora", {"rank": 64}, 23.94, train=_FF),
        ),
        (
            Target("SCEdit", "LoRA r=64", "memory", 0.48),
            Target("SCEdit", "Full", "memory", 0.55),
            Target("SCEdit", "Full", "time", 0.78),
            Target("SCEdit", "LoRA r=64", "time", 0.63),
        ),
        "paper: batch 32, 512 px, A100, AMP fp16",
    ),
    "table2": TableSpec(
        "table2", "Table 2: controllable generation efficiency (SD 2.1, canny)", "sd21", "ControlNet",
        (
            MethodSpec("ControlNet", "controlnet", _CANNY, 364.23, None, 1.00),
            MethodSpec("T2I-Adapter", "t2i-adapter", _CANNY, 77.37, None, 0.92),
            MethodSpec("ControlNet-XS", "controlnet-xs", _CANNY, 55.30, None, 0.97),
            MethodSpec("ControlLoRA", "controllora", _CANNY, 21.52, None, 1.34),
            MethodSpec("SCEdit k=1", "csc", {**_CANNY, "hint_kernel": 1}, 28.82, 34.78, 0.87, paper_mem_ratio=0.70),
            MethodSpec("SCEdit k=3", "csc", {**_CANNY, "hint_kernel": 3}, 99.11, 35.28, 0.87),
        ),
        (
            Target("SCEdit k=1", "ControlNet", "memory", 0.70),
            Target("SCEdit k=1", "ControlNet", "time", 0.87),
        ),
        "paper: batch 64, 512 px, A100; SCEdit memory figures from Table 6, the 0.70 ratio from the text "
        "('30% reduction in memory'); Table 2's single Mem. figure (37.01G) has no clear row",
    ),
    "table5": TableSpec(
        "table5", "Table 5: SC-Tuner ablations (SD 1.5)", "sd15", "ratio 1",
        (
            MethodSpec("ratio 1", "sc", {}, 19.68, 29.02),
            MethodSpec("ratio 5", "sc", {"ratio": 5}, 3.94, 28.29),
            MethodSpec("ratio 10", "sc", {"ratio": 10}, 1.98, 28.06),
            MethodSpec("skips {0,11}", "sc", {"skips": [0, 11]}, 3.48, 28.11),
            MethodSpec("skips {0,3,6,9,11}", "sc", {"skips": [0, 3, 6, 9, 11]}, 7.79, 28.56),
            MethodSpec("Conv", "sc", {"op": "conv3x3", "ratio": 8}, 22.13, 28.65),
        ),
        (),
        "paper: batch 32, 512 px, A100, AMP fp16",
    ),
    "table6": TableSpec(
        "table6", "Table 6: CSC-Tuner ablations (SD 2.1, canny)", "sd21", "k=1",
        (
            MethodSpec("k=1", "csc", {**_CANNY, "hint_kernel": 1}, 28.82, 34.78),
            MethodSpec("k=3", "csc", {**_CANNY, "hint_kernel": 3}, 99.11, 35.28),
            MethodSpec("skips {0,3,4,6,7,9,11}", "csc", {**_CANNY, "hint_kernel": 1, "skips": [0, 3, 4, 6, 7, 9, 11]},
                       17.14, 34.48),
            MethodSpec("Dual Conv", "csc", {**_CANNY, "hint_kernel": 1, "op": "conv3x3", "ratio": 6}, 37.82, 35.31),
        ),
        (),
        "paper: batch 64, 512 px, A100",
    ),
}

@dataclass
class BenchSettings:
    arch: str | None = None  # sd15 / sd21 (default: the table's)
    unet_config: str | None = None  # a diffusers U-Net config.json (any architecture)
    model: str | None = None  # real weights: a diffusers folder (or HF id in the cache)
    device: str = "cpu"
    batch: int = 1
    resolution: int = 256
    steps: int = 3
    warmup: int = 1
    precision: str = "auto"  # auto | no | fp16 | bf16
    methods: list[str] | None = None  # labels to run (default: all)
    seed: int = 0
    text_tokens: int = 77
    recompute_feed_forward: bool = False  # train.recompute_feed_forward, for every method alike
    lean: bool | str = "auto"  # train.lean, for every method alike
    prepack: bool | str = "auto"  # train.prepack (reordered frozen CPU convs), for every method alike

    def table_rows(self, name: str) -> tuple[TableSpec, list[MethodSpec]]:
        """Table `name` and the rows these settings run; a bad table, --batch, --resolution or --methods
        label is refused here, without torch (`scedit bench` checks them before the measuring loads)."""
        if name not in TABLES:
            raise SceditError(f"unknown table {name!r}; choose one of {', '.join(TABLES)}")
        if self.batch < 1:
            raise SceditError(f"--batch must be >= 1, got {self.batch}")
        if self.resolution < 8:
            raise SceditError(f"--resolution must be >= 8 pixels, got {self.resolution}")
        return TABLES[name], select_methods(TABLES[name], self.methods)


def select_methods(table: TableSpec, labels: list[str] | None) -> list[MethodSpec]:
    """The rows named by `labels` (any case), with the table's baseline added; all rows without labels."""
    if not labels:
        return list(table.methods)
    by_label = {m.label.lower(): m for m in table.methods}
    chosen = []
    for lab in labels:
        m = by_label.get(lab.strip().lower())
        if m is None:
            raise SceditError(f"--methods {lab!r}: {table.name} has no such row; choose from "
                              f"{', '.join(repr(m.label) for m in table.methods)}")
        chosen.append(m)
    if table.baseline.lower() not in {m.label.lower() for m in chosen}:
        chosen.insert(0, next(m for m in table.methods if m.label == table.baseline))
    return chosen


@dataclass
class MethodResult:
    label: str
    method: str
    config: dict
    trainable_params: int
    memory: dict
    timing: dict
    peak_bytes: int
    step_time_s: float
    saved_encoder_bytes: int
    memory_ratio: float | None = None
    time_ratio: float | None = None
    rss_ratio: float | None = None
    paper_params_m: float | None = None
    paper_mem_gb: float | None = None
    paper_mem_ratio: float | None = None
    paper_time_ratio: float | None = None
    final_loss: float | None = None
    train: dict = field(default_factory=dict)


@dataclass
class TableResult:
    table: str
    title: str
    baseline: str
    base: str
    machine: dict
    settings: dict
    rows: list[MethodResult] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

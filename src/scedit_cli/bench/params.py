"""`scedit bench params`: every Params figure of the paper's Tables 1, 2, 5 and 6, plus SDXL rows.

All models are built at real size on the `meta` device (shapes, no memory, no
download) from the same builders that training uses, and counted. Rows the
paper describes exactly must match to 0.01M; rows whose exact configuration is
not published are built in the closest honest configuration and the
difference is shown. The SDXL SC / CSC rows have no paper figure (the paper
has no SDXL experiment); they are counted the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..architectures import ARCH_NAMES, meta_base
from ..methods import build_method
from ..tuners.config import default_pre_hint

EXACT, CLOSEST, MISSING, NO_PAPER = "exact", "closest", "not implemented", "no paper figure"


@dataclass
class ParamRow:
    table: str
    setting: str
    method: str
    base: str
    params: int | None
    paper_m: float | None  # None: the paper has no figure for this row
    kind: str  # exact / closest / not implemented / no paper figure
    note: str = ""

    @property
    def params_m(self) -> float | None:
        return None if self.params is None else self.params / 1e6

    @property
    def diff_m(self) -> float | None:
        if self.params is None or self.paper_m is None:
            return None
        return round(self.params / 1e6 - self.paper_m, 4)

    @property
    def ok(self) -> bool:
        """Exact rows must round to the paper's figure (0.01M)."""
        if self.kind != EXACT:
            return True
        return self.params is not None and abs(self.params / 1e6 - self.paper_m) <= 0.005 + 1e-9

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(params_m=self.params_m, diff_m=self.diff_m, ok=self.ok)
        return d


def count(arch: str, method: str, **config) -> int:
    """Trainable parameters of `method` set up on `arch`'s real-size U-Net on the meta device: the very
    `build_method(...).setup(base)` that `scedit train` runs."""
    key = (arch, method, repr(sorted(config.items())))
    if key not in _COUNTS:
        base, _ = meta_base(arch=arch)
        m = build_method(method, config)
        with torch.device("meta"):
            m.setup(base)
        _COUNTS[key] = m.num_trainable()
    return _COUNTS[key]


_COUNTS: dict[tuple, int] = {}
_CANNY = {"conditions": ["canny"]}


def param_rows() -> list[ParamRow]:
    return _paper_rows() + sdxl_rows()


def sdxl_rows() -> list[ParamRow]:
    """SC / CSC on the SDXL U-Net (9 skips): the paper has no SDXL figures; the official release has
    SDXL controllers, whose hint encoder is wider (`default_pre_hint`, the CSC method's SDXL default)."""
    name = ARCH_NAMES["sdxl"]
    ratio, out = default_pre_hint(is_sdxl=True)
    hint = f"pre-hint width x{ratio:g}, {out} channels (official SDXL configs)"
    return [
        ParamRow("SDXL", "SCEdit", "sc", name, count("sdxl", "sc"), None, NO_PAPER, "ratio 1, all 9 skips"),
        ParamRow("SDXL", "SCEdit k=1", "csc", name, count("sdxl", "csc", **_CANNY, hint_kernel=1), None, NO_PAPER,
                 hint),
        ParamRow("SDXL", "SCEdit k=3", "csc", name, count("sdxl", "csc", **_CANNY, hint_kernel=3), None, NO_PAPER,
                 hint + "; k=3, the official configs' kernel"),
    ]


def _paper_rows() -> list[ParamRow]:
    sd15, sd21 = ARCH_NAMES["sd15"], ARCH_NAMES["sd21"]

    def sc(**kw):
        return count("sd15", "sc", **kw)

    def csc(**kw):
        return count("sd21", "csc", **_CANNY, **kw)

    controllora_rank = build_method("controllora", _CANNY).config.rank
    xs_ratio = build_method("controlnet-xs", _CANNY).config.size_ratio
    sc_all = sc()
    rows = [
        ParamRow("Table 1", "Full", "full", sd15, count("sd15", "full"), 859.52, EXACT, "the whole U-Net"),
        ParamRow("Table 1", "LoRA r=64", "lora", sd15, count("sd15", "lora", rank=64), 23.94, EXACT,
                 "peft, attention + FF targets"),
        ParamRow("Table 1", "LoRA r=6", "lora", sd15, count("sd15", "lora", rank=6), 2.24, EXACT,
                 "peft, attention + FF targets"),
        ParamRow("Table 1", "SCEdit", "sc", sd15, sc_all, 19.68, EXACT, "ratio 1, all 12 skips"),
        ParamRow("Table 1", "SCEdit ratio 10", "sc", sd15, sc(ratio=10), 1.98, EXACT),
        ParamRow("Table 2", "ControlNet", "controlnet", sd21, count("sd21", "controlnet", **_CANNY), 364.23, EXACT,
                 "diffusers ControlNetModel.from_unet"),
        ParamRow("Table 2", "T2I-Adapter", "t2i-adapter", sd21, count("sd21", "t2i-adapter", **_CANNY), 77.37, EXACT,
                 "diffusers T2IAdapter, full adapter"),
        ParamRow("Table 2", "ControlNet-XS", "controlnet-xs", sd21, count("sd21", "controlnet-xs", **_CANNY), 55.30,
                 CLOSEST, f"diffusers ControlNet-XS, size_ratio={xs_ratio} (paper's ratio not given)"),
        ParamRow("Table 2", "ControlLoRA", "controllora", sd21, count("sd21", "controllora", **_CANNY), 21.52, CLOSEST,
                 f"condition encoder + LoRA r={controllora_rank}, as `scedit train` builds it "
                 "(paper's rank not given)"),
        ParamRow("Table 2", "SCEdit k=1", "csc", sd21, csc(hint_kernel=1), 28.82, EXACT),
        ParamRow("Table 2", "SCEdit k=3", "csc", sd21, csc(hint_kernel=3), 99.11, EXACT),
        ParamRow("Table 5a", "ratio 1", "sc", sd15, sc_all, 19.68, EXACT),
        ParamRow("Table 5a", "ratio 5", "sc", sd15, sc(ratio=5), 3.94, EXACT),
        ParamRow("Table 5a", "ratio 10", "sc", sd15, sc(ratio=10), 1.98, EXACT),
        ParamRow("Table 5b", "skips {0,11}", "sc", sd15, sc(skips=[0, 11]), 3.48, EXACT),
        ParamRow("Table 5b", "skips {0,3,6,9,11}", "sc", sd15, sc(skips=[0, 3, 6, 9, 11]), 7.79, EXACT),
        ParamRow("Table 5b", "all 12 skips", "sc", sd15, sc_all, 19.68, EXACT),
        ParamRow("Table 5c", "Linear", "sc", sd15, sc_all, 19.68, EXACT),
        ParamRow("Table 5c", "Conv", "sc", sd15, sc(op="conv3x3", ratio=8), 22.13, EXACT,
                 "two 3x3 convs, ratio 8 (op=conv3x3)"),
        ParamRow("Table 5c", "ResPrefix", "-", sd15, None, 21.64, MISSING,
                 "Res-Tuning prefix variant: its exact design is not published"),
        ParamRow("Table 6a", "k=1", "csc", sd21, csc(hint_kernel=1), 28.82, EXACT),
        ParamRow("Table 6a", "k=3", "csc", sd21, csc(hint_kernel=3), 99.11, EXACT),
        ParamRow("Table 6b", "skips {0,3,4,6,7,9,11}", "csc", sd21,
                 csc(hint_kernel=1, skips=[0, 3, 4, 6, 7, 9, 11]), 17.14, EXACT, "cascade through the tuned skips only"),
        ParamRow("Table 6b", "all 12 skips", "csc", sd21, csc(hint_kernel=1), 28.82, EXACT),
        ParamRow("Table 6c", "Single Conv", "csc", sd21, csc(hint_kernel=1), 28.82, EXACT),
        ParamRow("Table 6c", "Dual Conv", "csc", sd21, csc(hint_kernel=1, op="conv3x3", ratio=6), 37.82, CLOSEST,
                 "two 3x3 convs with ratio 6 (the paper's exact dual-conv layout is not published)"),
    ]
    return rows

"""`scedit convert`: official SCEdit checkpoints -> scedit tuner files.

Formats understood (all read as plain tensors; pickles only with
`torch.load(weights_only=True)`):

- scepter text-to-image (SC-Tuner), `pytorch_model.bin`:
  `model.lsc_identity.{m}.tuner_op.ln{1,2}.{weight,bias}`;
- scepter controllable generation (CSC-Tuner), `pytorch_model.bin`:
  `0.pre_hint_blocks.{i}.*`, `0.dense_hint_blocks.{i}.1.*`,
  `0.lsc_tuner_blocks.{m}.tuner_op.ln{1,2}.*` (any prefix before those names);
- ms-swift SCEdit adapters (`SCETuning`, `adapter_model.bin` or
  `.safetensors`): `...lsc_identity.{m}.scetuner_<adapter>.tuner_op.ln{1,2}.*`
  (scepter U-Net, identity mode), `...output_blocks.{m}.0.scetuner_<adapter>...`
  (scepter U-Net, decoder mode) or `...up_blocks.{b}.resnets.{r}.scetuner_<adapter>...`
  (diffusers U-Net, decoder mode).

Index conventions (`tuners.layout.SkipLayout`): SC tuners `m` are in decoder order, so
tuner m is our paper index j = m; dense hint blocks are in encoder order; `ln1`
is the down projection, `ln2` the up projection. The official forward is
`skip + T_m(skip + c) + c` for CSC and `skip + T_m(skip)` for SC, the same as
ours at scale 1, so converted tuners reproduce the source weights' outputs.
Ratio, kernel, tuned skips and channels are read from the tensor shapes; the
skip layout comes from a base model (`model`) or a named architecture (`arch`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SceditError
from .fsutil import read_torch_weights
from .hubutil import check_model_source
from .tuners.card import CardFacts, write_model_card
from .tuners.config import PRE_HINT_CHANNELS, CSCTunerConfig, SCTunerConfig, pre_hint_channels
from .tuners.files import check_tuner_destination, is_tuner_file

if TYPE_CHECKING:  # torch loads once the arguments and paths have been checked
    import torch

    from .tuners import SkipLayout, SkipTuner

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
CANDIDATE_FILES = (
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "default/adapter_model.safetensors",
    "default/adapter_model.bin",
)

_LN = r"tuner_op\.ln([12])\.(weight|bias)$"
SC_PATTERNS = (
    ("scepter", re.compile(r"(?:^|\.)lsc_identity\.(\d+)\." + _LN)),
    ("ms-swift", re.compile(r"(?:^|\.)lsc_identity\.(\d+)\.scetuner_[^.]+\." + _LN)),
    ("ms-swift", re.compile(r"(?:^|\.)output_blocks\.(\d+)\.0\.scetuner_[^.]+\." + _LN)),
    ("ms-swift-diffusers", re.compile(r"(?:^|\.)up_blocks\.(\d+)\.resnets\.(\d+)\.scetuner_[^.]+\." + _LN)),
)
CSC_PATTERN = re.compile(r"^(.*?)(pre_hint_blocks|dense_hint_blocks|lsc_tuner_blocks)\.(.+)$")


@dataclass
class ConvertResult:
    out: Path
    method: str
    source_format: str
    config: dict
    tuned_skips: list[int]
    trainable_parameters: int

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "method": self.method,
            "source_format": self.source_format,
            "config": self.config,
            "tuned_skips": self.tuned_skips,
            "trainable_parameters": self.trainable_parameters,
        }


# --- reading -----------------------------------------------------------------------------------


def _find_weights(path: Path) -> Path:
    if path.is_dir():
        for name in CANDIDATE_FILES:
            if (path / name).is_file():
                return path / name
        raise SceditError(
            f"{path}: no checkpoint found in this folder (looked for {', '.join(CANDIDATE_FILES)}); "
            "pass the weights file itself"
        )
    if not path.is_file():
        raise SceditError(f"{path}: checkpoint not found")
    return path


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Tensors of a checkpoint file: safetensors, or a pickle loaded with weights_only=True."""
    path = _find_weights(Path(path).expanduser())
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises several types
            raise SceditError(f"{path}: not a readable safetensors file ({e})") from None
    elif path.suffix in PICKLE_SUFFIXES:
        try:
            state = read_torch_weights(path)
        except ValueError as e:
            raise SceditError(f"{path}: {e}. Re-save the state dict (tensors only) or as .safetensors") from None
    else:
        raise SceditError(
            f"{path}: unknown checkpoint type {path.suffix or '(no suffix)'!r}; expected .bin, .pt, .pth, .ckpt "
            "or .safetensors"
        )
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise SceditError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise SceditError(f"{path}: entry {bad[0]!r} is not a tensor; expected a state dict of tensors")
    return state, path


# --- layout ------------------------------------------------------------------------------------


def check_layout_source(model: str | None, arch: str | None) -> None:
    """Exactly one of a base model (whose local path exists) and an architecture name."""
    if (model is None) == (arch is None):
        raise SceditError("give exactly one of --model (a base model) and --arch (sd15, sd21 or sdxl)")
    if model is not None:
        check_model_source(model)


def layout_for(model: str | None = None, arch: str | None = None) -> tuple[SkipLayout, int, str]:
    """(skip layout, VAE factor, base name) from a base model or a named architecture."""
    check_layout_source(model, arch)
    from .tuners import SkipLayout

    if arch is not None:
        from .architectures import build_unet

        return SkipLayout.from_unet(build_unet(arch, device="meta")), 8, arch
    from .models import load_base
    from .console import quiet_loaders

    quiet_loaders()
    base = load_base(model)
    return SkipLayout.from_unet(base.unet), base.vae_scale_factor, model


# --- conversion --------------------------------------------------------------------------------


def _infer_ratio(pairs: list[tuple[int, int]], where: str) -> float:
    """A ratio r with int(C // r) == d for every (C, d): how `build_op` sizes the hidden layer."""
    c0, d0 = pairs[0]
    r = c0 / d0
    for _ in range(8):
        if all(max(1, int(c // r)) == d for c, d in pairs):
            return r
        r = math.nextafter(r, 0.0)
    raise SceditError(
        f"{where}: the tuners' hidden sizes {[d for _, d in pairs]} for channels {[c for c, _ in pairs]} do not "
        "follow one channel ratio; scedit tuners use one ratio for every skip"
    )


def _sc_entries(state: dict, layout: SkipLayout, src: Path) -> tuple[dict[int, dict[str, torch.Tensor]], str]:
    """{decoder index j: {"ln1.weight": ..., ...}} and the detected format."""
    up_offsets = []
    n = 0
    for group in layout.up_block_skips:
        up_offsets.append(n)
        n += len(group)
    entries: dict[int, dict[str, torch.Tensor]] = {}
    fmt = None
    unknown = []
    for key, value in state.items():
        for name, pat in SC_PATTERNS:
            m = pat.search(key)
            if m is None:
                continue
            if name == "ms-swift-diffusers":
                b, r = int(m.group(1)), int(m.group(2))
                if b >= len(layout.up_block_skips) or r >= len(layout.up_block_skips[b]):
                    raise SceditError(f"{src}: key {key} names up block {b} resnet {r}, not in this U-Net")
                j, ln, kind = up_offsets[b] + r, m.group(3), m.group(4)
            else:
                j, ln, kind = int(m.group(1)), m.group(2), m.group(3)
            if fmt is not None and fmt != name:
                raise SceditError(f"{src}: mixes {fmt} and {name} key layouts; convert one tuner at a time")
            fmt = name
            entries.setdefault(j, {})[f"ln{ln}.{kind}"] = value
            break
        else:
            unknown.append(key)
    if unknown:
        raise SceditError(
            f"{src}: {len(unknown)} key(s) are not SCEdit tuner weights, e.g. {unknown[0]!r}; "
            "expected lsc_identity.{m}.tuner_op.ln{1,2}.* (scepter) or ms-swift scetuner keys"
        )
    return entries, fmt


def _check_linear(entries: dict[int, dict], layout: SkipLayout, src: Path, prefix: str) -> list[tuple[int, int]]:
    pairs = []
    for j, e in sorted(entries.items()):
        missing = [k for k in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias") if k not in e]
        if missing:
            raise SceditError(f"{src}: tuner {prefix}{j} lacks {', '.join(missing)}")
        if not 0 <= j < layout.num_skips:
            raise SceditError(
                f"{src}: tuner {prefix}{j} is out of range: the base has {layout.num_skips} skips; "
                "is --model/--arch the base this checkpoint was trained on?"
            )
        d, c = e["ln1.weight"].shape
        expected = layout.channels[layout.decoder_to_encoder(j)]
        if c != expected:
            raise SceditError(
                f"{src}: tuner {prefix}{j} works on {c} channels but decoder layer {j} of this base has {expected}: "
                "pass the --model/--arch this checkpoint was trained on"
            )
        pairs.append((c, d))
    return pairs


def _convert_sc(state, layout, src):
    entries, fmt = _sc_entries(state, layout, src)
    pairs = _check_linear(entries, layout, src, "lsc_identity.")
    ratio = _infer_ratio(pairs, str(src))
    js = sorted(entries)
    config = SCTunerConfig(ratio=ratio, op="linear", skips=None if len(js) == layout.num_skips else js)
    ours = {f"tuners.{j}.{k}": v for j, e in entries.items() for k, v in e.items()}
    return "sc", config, ours, fmt


def _convert_csc(state, layout, src, condition, vae_factor):
    prefixes = set()
    parts: dict[str, dict[str, torch.Tensor]] = {"pre_hint_blocks": {}, "dense_hint_blocks": {}, "lsc_tuner_blocks": {}}
    for key, value in state.items():
        m = CSC_PATTERN.match(key)
        if m is None:
            raise SceditError(
                f"{src}: key {key!r} is not part of an SCEdit controller (pre_hint_blocks, dense_hint_blocks, "
                "lsc_tuner_blocks)"
            )
        prefixes.add(m.group(1))
        parts[m.group(2)][m.group(3)] = value
    if len(prefixes) > 1:
        raise SceditError(
            f"{src}: holds {len(prefixes)} controllers (prefixes {', '.join(sorted(repr(p) for p in prefixes))}); "
            "save each one separately and convert them one at a time"
        )
    if condition is None:
        raise SceditError(f"{src}: this is a controllable-generation (CSC) checkpoint: pass --condition (e.g. canny)")
    # pre-hint: Sequential conv/SiLU; convs at even indices 0, 2, ..., 12.
    pre = parts["pre_hint_blocks"]
    conv_ids = sorted({int(k.split(".")[0]) for k in pre})
    expected_ids = list(range(0, 2 * len(PRE_HINT_CHANNELS), 2))
    if conv_ids != expected_ids:
        raise SceditError(f"{src}: pre_hint_blocks convs at {conv_ids}, expected {expected_ids}")
    outs = tuple(pre[f"{i}.weight"].shape[0] for i in conv_ids)
    dim_ratio = outs[0] / PRE_HINT_CHANNELS[0]
    if outs != pre_hint_channels(dim_ratio, outs[-1]):
        raise SceditError(
            f"{src}: pre-hint encoder channels {outs} are not SCEdit's {PRE_HINT_CHANNELS[:-1]} times one "
            f"PRE_HINT_DIM_RATIO ({dim_ratio:g} from the first conv) followed by PRE_HINT_OUT_CHANNELS"
        )
    in_channels = pre["0.weight"].shape[1]
    # dense hint blocks: `{i}.1.{weight,bias}` in encoder order.
    dense: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in parts["dense_hint_blocks"].items():
        m = re.fullmatch(r"(\d+)\.1\.(weight|bias)", k)
        if m is None:
            raise SceditError(f"{src}: unexpected key dense_hint_blocks.{k}")
        dense.setdefault(int(m.group(1)), {})[m.group(2)] = v
    tuners: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in parts["lsc_tuner_blocks"].items():
        m = re.fullmatch(r"(\d+)\.(?:scetuner_[^.]+\.)?" + _LN, k)
        if m is None:
            raise SceditError(f"{src}: unexpected key lsc_tuner_blocks.{k}")
        tuners.setdefault(int(m.group(1)), {})[f"ln{m.group(2)}.{m.group(3)}"] = v
    if not dense or not tuners:
        raise SceditError(f"{src}: controller has no dense_hint_blocks or no lsc_tuner_blocks")
    n = layout.num_skips
    js = sorted(tuners)
    encoder_needed = sorted(n - 1 - j for j in js)
    if sorted(dense) != encoder_needed:
        raise SceditError(
            f"{src}: dense hint blocks {sorted(dense)} (encoder order) do not serve tuners {js} (decoder order); "
            f"expected hint blocks {encoder_needed}; is --model/--arch the base it was trained on?"
        )
    pairs = _check_linear(tuners, layout, src, "lsc_tuner_blocks.")
    ratio = _infer_ratio(pairs, str(src))
    kernels = {e["weight"].shape[-1] for e in dense.values()}
    if len(kernels) != 1:
        raise SceditError(f"{src}: dense hint blocks use several kernel sizes {sorted(kernels)}")
    config = CSCTunerConfig(
        ratio=ratio, op="linear", skips=None if len(js) == n else js, hint_kernel=kernels.pop(),
        hint_downscale=vae_factor, condition=condition, in_channels=in_channels,
        pre_hint_dim_ratio=dim_ratio, pre_hint_out_channels=outs[-1],
    )
    ours = {f"hint.pre_hint_blocks.{k}": v for k, v in pre.items()}
    for pos, i in enumerate(sorted(dense)):
        for kind, v in dense[i].items():
            ours[f"hint.dense_hint_blocks.{pos}.1.{kind}"] = v
    for j, e in tuners.items():
        for k, v in e.items():
            ours[f"tuners.{j}.{k}"] = v
    return "csc", config, ours, "scepter-control"


def is_control_checkpoint(state: dict[str, torch.Tensor]) -> bool:
    """Whether the tensors are a controllable-generation (CSC) checkpoint, which needs a condition name."""
    return any(CSC_PATTERN.match(k) for k in state)


def tuner_from_state(
    state: dict[str, torch.Tensor], src: Path, layout: SkipLayout, vae_factor: int = 8, condition: str | None = None,
) -> tuple[SkipTuner, str]:
    """An official checkpoint's tensors as a scedit tuner for `layout` (in memory), and the detected format."""
    if is_control_checkpoint(state):
        method, config, ours, fmt = _convert_csc(state, layout, src, condition, vae_factor)
    else:
        method, config, ours, fmt = _convert_sc(state, layout, src)
        if condition is not None:
            raise SceditError(f"{src}: --condition is for controllable-generation checkpoints; this is an SC-Tuner")
    from .tuners import build_tuner

    tuner = build_tuner(method, config.to_dict(), layout)
    expected = tuner.state_dict()
    missing = sorted(set(expected) - set(ours))
    extra = sorted(set(ours) - set(expected))
    if missing or extra:
        raise SceditError(f"{src}: converted weights do not fit (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in ours.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise SceditError(
                f"{src}: tensor for {k} has shape {tuple(v.shape)}, this base needs {tuple(expected[k].shape)}: "
                "is --model/--arch the base this checkpoint was trained on?"
            )
    tuner.load_state_dict({k: v.float() for k, v in ours.items()})
    return tuner, fmt


def convert_checkpoint(
    src: str | Path,
    out: str | Path,
    model: str | None = None,
    arch: str | None = None,
    condition: str | None = None,
    overwrite: bool = False,
) -> ConvertResult:
    """Convert an official SCEdit checkpoint to a scedit tuner folder at `out` (a tuner already
    there is replaced only with `overwrite`)."""
    out = Path(out).expanduser()
    if is_tuner_file(Path(src).expanduser()):
        raise SceditError(f"{src}: already a scedit tuner; use it as it is (--tuner {src}), there is nothing to convert")
    if out.resolve() in Path(src).expanduser().resolve().parents:
        raise SceditError(f"--out {out}: holds the source checkpoint {src}; choose a new folder")
    check_tuner_destination(out, overwrite, "--out")
    check_layout_source(model, arch)
    state, path = read_state_dict(src)
    layout, vae_factor, base_name = layout_for(model, arch)
    tuner, fmt = tuner_from_state(state, path, layout, vae_factor, condition)
    from .tuners import save_tuner

    save_tuner(tuner, out, base=base_name, extra={"converted_from": str(path), "source_format": fmt})
    write_model_card(out, CardFacts(base=base_name, converted_from=str(path), source_format=fmt))
    return ConvertResult(out, tuner.method, fmt, tuner.config.to_dict(), tuner.config.decoder_indices(layout),
                         tuner.trainable_parameters)

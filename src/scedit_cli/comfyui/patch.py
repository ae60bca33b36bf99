"""scedit tuners inside ComfyUI's U-Net: one output-block patch reading the tuners a MODEL carries.

ComfyUI's `UNetModel.forward` pops skip `hsp` for output block i, adds ControlNet residuals to it, then
calls every `output_block_patch` as `h, hsp = p(h, hsp, transformer_options)` before concatenating
`[h, hsp]`; `transformer_options["block"] == ("output", i)`. Output block i is the decoder layer our
paper index j = i tunes, fed by encoder skip N-1-i.

Every SCEdit node appends its tuner to a list kept in the cloned MODEL's
`model_options["transformer_options"]["scedit"]` (a new list each time, so the clone and the model it
came from never share a list) and installs `output_block_patch` once. The patch sums the edits of all
of them, `hsp + sum_m w_m * delta_m(hsp)` as `SkipEditor` does: SC-Tuners with their strength, CSC-Tuners
active at the current sigma with Eq. 7 weights (see `weights_at`). Other output-block patches (FreeU, ...)
stay in ComfyUI's list and run in their order.
"""

from __future__ import annotations

import copy

import torch

from ..errors import SceditError
from ..tuners import CSCTuner, SkipTuner, fused
from .hints import batch_hint, fit_hint

STATE_KEY = "scedit"


class TunerEntry:
    """One node's tuner on a model: fixed once made, shared by the clones of that model.

    The loaded tuner stays fp32 on the CPU; the U-Net gets a copy on the skip's device with its OPs in
    the skip's dtype, made on first use and again when ComfyUI has moved or recast the model."""

    is_control = False

    def __init__(self, tuner: SkipTuner, strength: float, name: str):
        self.tuner = tuner
        self.strength = float(strength)
        self.name = name
        self._runtime: tuple[tuple, SkipTuner] | None = None
        # The fused edits of a model whose list starts with this entry (`fused.edit`'s plans).
        self.plans = fused.DropOnCopy()

    def __deepcopy__(self, memo):
        # Older ComfyUI deep-copies model_options on clone; an entry never changes, so clones share it.
        return self

    def runtime(self, like: torch.Tensor) -> SkipTuner:
        key = (like.device, like.dtype)
        if self._runtime is None or self._runtime[0] != key:
            tuner = copy.deepcopy(self.tuner).requires_grad_(False).eval()
            tuner.tuners.to(like.dtype)  # the hint encoder, run once per image, stays fp32
            self._runtime = (key, tuner.to(like.device))
            self._new_runtime()
        return self._runtime[1]

    def _new_runtime(self) -> None:
        pass

    def skip_for(self, block: int, hsp: torch.Tensor) -> int:
        """Encoder index of the skip output block `block` receives, after checking it fits the tuner."""
        layout = self.tuner.layout
        expected = layout.channels[layout.decoder_to_encoder(block)] if block < layout.num_skips else None
        if hsp.shape[1] != expected:
            raise SceditError(
                f"SCEdit: output block {block} of this U-Net passes a {hsp.shape[1]}-channel skip but tuner "
                f"{self.name} expects {expected or 'no skip'} there (it was built for {layout.num_skips} skips, "
                f"channels {list(layout.channels)}): use a tuner trained for this base model"
            )
        return layout.decoder_to_encoder(block)

    def actor(self, skip: int, hsp: torch.Tensor, weight: float, transformer_options: dict) -> tuple:
        """(tuner, weight, hints) for `fused.edit` on skip `skip` of this U-Net call."""
        return self.runtime(hsp), weight, None


class ControlEntry(TunerEntry):
    """A CSC-Tuner with its condition image(s) and the sigma range it acts in.

    Hint features are computed once per latent size (and device / dtype) and reused by every step."""

    is_control = True

    def __init__(self, tuner: CSCTuner, strength: float, name: str, cond: torch.Tensor,
                 percents: tuple[float, float] | None, base_model, factor: int):
        super().__init__(tuner, strength, name)
        self.cond = cond  # (B, C, H, W) float32 in [0, 1], on the CPU
        self.percents = percents  # (start, end) of the schedule; None: all of it
        self.base_model = base_model  # ComfyUI's BaseModel (MODEL.model), whose model_sampling maps percents
        self.factor = factor  # pixels per latent pixel
        self._hints: dict[tuple[int, int], dict[int, torch.Tensor]] = {}
        self._batched: dict[tuple, dict[int, torch.Tensor]] = {}  # the hints tiled to a U-Net batch
        self._range: tuple | None = None

    def _new_runtime(self) -> None:
        self._hints = {}
        self._batched = {}

    def sigma_range(self) -> tuple[float, float]:
        """(sigma at start, sigma at end), from the model sampling in use while sampling, as ControlNet's
        `pre_run` reads it: a model-sampling node later in the graph patches it in by then."""
        sampling = getattr(self.base_model, "model_sampling", None)
        if sampling is None:
            raise SceditError(f"SCEdit Control {self.name}: this MODEL has no model_sampling to map start/end percent")
        if self._range is None or self._range[0] is not sampling:
            self._range = (sampling, *(float(sampling.percent_to_sigma(p)) for p in self.percents))
        return self._range[1], self._range[2]

    def active(self, transformer_options: dict) -> bool:
        if self.percents is None:
            return True
        sigmas = transformer_options.get("sigmas")
        if sigmas is None:
            raise SceditError(
                f"SCEdit Control {self.name}: start/end percent need the sampler's current sigma, which this "
                "sampler does not pass (transformer_options['sigmas']); use 0 and 1"
            )
        sigma = float(sigmas.flatten()[0]) if torch.is_tensor(sigmas) else float(sigmas[0])
        start, end = self.sigma_range()
        # ComfyUI's ControlNet: off when t[0] > sigma(start) or t[0] < sigma(end).
        return end <= sigma <= start

    def hints(self, latent_hw: tuple[int, int], like: torch.Tensor) -> dict[int, torch.Tensor]:
        tuner = self.runtime(like)
        if latent_hw not in self._hints:
            h, w = latent_hw
            cond = fit_hint(self.cond, w * self.factor, h * self.factor).to(like.device)
            with torch.no_grad():
                feats = tuner.encode_condition(cond)
            self._hints[latent_hw] = {k: v.to(like.dtype) for k, v in feats.items()}
        return self._hints[latent_hw]

    def actor(self, skip, hsp, weight, transformer_options):
        tuner = self.runtime(hsp)
        if not tuner.tunes(skip):
            return tuner, weight, None
        shape = transformer_options.get("original_shape")
        if shape is None:
            raise SceditError(
                "SCEdit Control: ComfyUI did not pass the latent size (transformer_options['original_shape']); "
                "this U-Net forward is not ComfyUI's UNetModel"
            )
        chunks = len(transformer_options.get("cond_or_uncond") or [0])
        key = (int(shape[-2]), int(shape[-1]), hsp.shape[0], chunks)
        if key not in self._batched:  # the same tensors every step, so the fused edit keeps its terms
            hints = self.hints(key[:2], hsp)
            self._batched[key] = {s: batch_hint(c, hsp.shape[0], chunks) for s, c in hints.items()}
        return tuner, weight, self._batched[key]


def weights_at(entries, transformer_options: dict) -> list[tuple[TunerEntry, float]]:
    """Each entry that acts in this U-Net call, with its weight.

    SC-Tuners: their strength. CSC-Tuners active now: Eq. 7 weights, the strengths normalised to sum 1,
    times the largest strength; so one Control node's weight is its strength (as in `scedit sample`),
    and several with the strongest at 1 get exactly `scedit compose`'s weights."""
    controls = [e for e in entries if e.is_control and e.strength > 0 and e.active(transformer_options)]
    total = sum(e.strength for e in controls)
    top = max((e.strength for e in controls), default=0.0)
    out = []
    for e in entries:
        if e.is_control:
            if e in controls:
                out.append((e, e.strength / total * top))
        elif e.strength != 0:
            out.append((e, e.strength))
    return out


def output_block_patch(h, hsp, transformer_options):
    entries = transformer_options.get(STATE_KEY)
    block = transformer_options.get("block")
    if not entries or block is None or block[0] != "output":
        return h, hsp
    acting = weights_at(entries, transformer_options)
    if not acting:
        return h, hsp
    # Each entry checks that hsp fits its tuner; all then name the same encoder skip.
    skips = [entry.skip_for(block[1], hsp) for entry, _ in acting]
    actors = [entry.actor(s, hsp, w, transformer_options) for (entry, w), s in zip(acting, skips)]
    return h, fused.edit(entries[0].plans, skips[:1], (hsp,), actors)[0]


def entries_of(model) -> list[TunerEntry]:
    return list(model.model_options.get("transformer_options", {}).get(STATE_KEY, ()))


def with_entry(model, entry: TunerEntry):
    """A clone of the ComfyUI MODEL `model` that also applies `entry`."""
    m = model.clone()
    installed = m.model_options.get("transformer_options", {}).get("patches", {}).get("output_block_patch", [])
    if not any(p is output_block_patch for p in installed):
        m.set_model_output_block_patch(output_block_patch)
    options = m.model_options.setdefault("transformer_options", {})
    options[STATE_KEY] = [*options.get(STATE_KEY, ()), entry]
    return m

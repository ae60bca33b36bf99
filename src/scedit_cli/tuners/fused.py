"""The skip edit when sampling: every tuner on every same-shape skip of an up block in one pixel MLP.

Without autograd (diffusers' pipelines, `scedit sample` / `compose`, the ComfyUI nodes) a GPU at batch 1
waits on each kernel's launch, so a tuner costs its kernel count more than its arithmetic. Two facts
keep that count at four per group of skips, whatever the number of tuners:

- The edit `x + Σ_m α_m·δ_m(x)` of M Linear-OP tuners is one MLP whose hidden layer is theirs side by
  side: `[W1_1; ...; W1_M]` in, `[α_1·W2_1, ..., α_M·W2_M]` out. A CSC-Tuner's δ is `T(x + s·c) + s·c`;
  its first product starts from `W1·s·c + b1` and its output gains `α·(b2 + s·c)`, both fixed for an
  image, so the hint is never added to the skip at each step.
- The K skips an up block receives with one shape (SD 1.5: three 1280 x 8 x 8, two 1280 x 16 x 16, ...)
  run as one batched product over their stacked features (one more kernel, the stack).

Per group: `baddbmm` (hidden), GELU in place, `baddbmm` accumulating into the skip, one add. What is
fixed (the weights side by side, the hint terms) is made on the first step and kept while the weights
(identity, version, data address), hints, scales, weights α and skip shapes stay.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..lean import amp_dtype


class DropOnCopy(dict):
    """A cache of tensors made from a module's own weights: copies and pickles of the module start it empty."""

    def __deepcopy__(self, memo):
        return type(self)()

    def __reduce__(self):
        return (type(self), ())


class Part:
    """One tuner's Linear OP on one skip, weighted `alpha`: `δ = W2·gelu(W1·(x + shift) + b1) + b2 + shift`.

    `params` are the OP's `(w1, b1, w2, b2)`; a CSC-Tuner gives its hint features `hint` for this skip and
    `tuner`, whose `fused_shift(skip, x, hint)` makes `shift` (`s·c` as (B, C, P)) when a plan is made;
    `scale` is what that depends on besides `hint`. Made at every step, so it only holds references."""

    __slots__ = ("params", "alpha", "tuner", "skip", "hint", "scale")

    def __init__(self, params: tuple, alpha: float, tuner=None, skip: int = -1, hint=None, scale: float = 0.0):
        self.params = params
        self.alpha = alpha
        self.tuner = tuner
        self.skip = skip
        self.hint = hint
        self.scale = scale


Actor = tuple  # (tuner, weight, hints: {encoder skip: features} or None for the tuner's own)


def sampling(x: torch.Tensor) -> bool:
    """Whether skip `x` is being edited for sampling: outside autograd (diffusers' pipelines and ComfyUI
    run without it) and outside an autocast to another dtype."""
    return not torch.is_grad_enabled() and amp_dtype(x.device.type, x.dtype) == x.dtype


def edit(cache: dict, skips: Sequence[int], xs: Sequence[torch.Tensor], actors: Sequence[Actor],
         stack: bool | None = None) -> list:
    """`x + Σ_m w_m·δ_m(x)` for each skip `xs[i]` (encoder index `skips[i]`) of one up block.

    When sampling, tuners with a `part` run fused, and with `stack` the skips of one shape and the same
    tuners acting as one batch (None: except on a CPU, which is compute-bound there and gains nothing from
    fewer kernels while the stack is one more copy). The others (and all in training) add `w·delta`.
    `cache` keeps the plans. Runs at every step of every image: the host's time here is what a GPU at
    batch 1 waits on, so it does little more than look up and compare."""
    out = list(xs)
    if not xs:
        return out
    fast = sampling(xs[0])
    if stack is None:
        stack = xs[0].device.type != "cpu"
    groups: dict[tuple, list] = {}  # signature -> indices of the skips run together
    rows: dict[int, list[Part]] = {}
    slow = []
    for i, s in enumerate(skips):
        x = xs[i]
        parts = []
        sig = [x.shape] if stack else [i]
        alone = False
        for m, (tuner, w, hints) in enumerate(actors):
            if w == 0.0 or not tuner.tunes(s):
                continue
            hint = None if hints is None else hints[s]
            p = tuner.part(s, x, w, hint) if fast else None
            if p is None:
                slow.append((i, tuner, w, hint))
                alone = True
            else:
                parts.append(p)
                sig.append(m)
        if parts:
            if alone:
                sig.append(("alone", i))  # its other tuners add to the fused result below
            groups.setdefault(tuple(sig), []).append(i)
            rows[i] = parts
    for index in groups.values():
        group = [xs[i] for i in index]
        results = _run(_plan(cache, tuple(skips[i] for i in index), group, [rows[i] for i in index]), group)
        for i, r in zip(index, results):
            out[i] = r
    for i, tuner, w, hint in slow:
        d = tuner.delta(skips[i], xs[i], hint)
        if d is not None:
            out[i] = out[i] + (d if w == 1.0 else w * d)
    return out


def _plan(cache: dict, where: tuple[int, ...], xs: list[torch.Tensor], rows: list[list[Part]]) -> tuple:
    """The cached plan for skips `where`, made again where anything it was made from has changed."""
    x = xs[0]
    key = [x.shape, x.dtype, x.device]
    for row in rows:
        for p in row:
            w1, b1, w2, b2 = p.params
            key += (p.alpha, id(p.hint), p.scale, id(w1), w1._version, w1.data_ptr(), id(b1), b1._version,
                    b1.data_ptr(), id(w2), w2._version, w2.data_ptr(), id(b2), b2._version, b2.data_ptr())
    hit = cache.get(where)
    if hit is None or hit[0] != key:
        # `keep`: the objects whose ids are in the key stay alive, so no id is reused while it is kept.
        keep = [o for row in rows for p in row for o in (*p.params, p.hint)]
        hit = (key, keep, _make_plan(rows, xs))
        cache[where] = hit
    return hit[2]


def _make_plan(rows: list[list[Part]], xs: list[torch.Tensor]) -> tuple:
    """(w1, hidden_bias, w2, alpha, tail) for `_run`: batched over the images (weights as stride-0 views)
    for one skip, over the skips (images side by side in the columns) for several."""
    terms = [_skip_terms(row, x) for row, x in zip(rows, xs)]
    batch = xs[0].shape[0]
    if len(terms) == 1:
        w1, hidden, w2, alpha, tail = terms[0]
        return w1.expand(batch, -1, -1), hidden, w2.expand(batch, -1, -1), alpha, tail
    w1, hidden, w2, alpha, tail = zip(*terms)
    return (torch.stack(w1), torch.stack([_columns(h) for h in hidden]), torch.stack(w2), alpha[0],
            torch.stack([_columns(t) for t in tail]))


def _skip_terms(row: list[Part], x: torch.Tensor) -> tuple:
    """One skip's (w1 (H, C), hidden bias (H, 1) or (B, H, P), w2 (C, H), alpha, tail (C, 1) or (B, C, P))
    for the tuners of `row` side by side (H: their hidden sizes summed); alone, a tuner's weights are
    used as they are and its alpha scales the product instead."""
    w1s, hidden, w2s, tail = [], [], [], None
    alone = len(row) == 1
    for p in row:
        w1, b1, w2, b2 = (t.detach() for t in p.params)
        b1, b2 = b1[:, None], b2[:, None]
        if p.hint is None:
            h, t = b1, b2 * p.alpha
        else:
            s = p.tuner.fused_shift(p.skip, x, p.hint)
            h, t = torch.baddbmm(b1, w1.expand(s.shape[0], -1, -1), s), (s + b2).mul_(p.alpha)
        w1s.append(w1)
        hidden.append(h)
        w2s.append(w2 if alone else w2 * p.alpha)
        tail = t if tail is None else tail + t
    if alone:
        return w1s[0], hidden[0], w2s[0], row[0].alpha, tail
    wide = [h for h in hidden if h.ndim == 3]
    if wide:  # a CSC-Tuner's per-pixel term beside others' per-channel biases
        b, _, pixels = wide[0].shape
        hidden_bias = torch.cat([h.expand(b, -1, pixels) for h in hidden], 1)
    else:
        hidden_bias = torch.cat(hidden)
    return torch.cat(w1s), hidden_bias, torch.cat(w2s, 1), 1.0, tail


def _columns(t: torch.Tensor) -> torch.Tensor:
    """(B, n, P) -> (n, B·P), the images side by side as `_run` lays out stacked skips; (n, 1) stays."""
    return t if t.ndim == 2 else t.transpose(0, 1).reshape(t.shape[1], -1)


def _run(plan: tuple, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    w1, hidden_bias, w2, alpha, tail = plan
    x = xs[0]
    b, c = x.shape[:2]
    if len(xs) == 1:
        y = x.reshape(b, c, -1)
    else:  # (K, C, B·P): the stack is the one copy; the weights are read once per skip, not per image
        y = torch.stack([s.transpose(0, 1) for s in xs]).view(len(xs), c, -1)
    h = torch.baddbmm(hidden_bias, w1, y)
    torch.ops.aten.gelu_(h)
    r = torch.baddbmm(y, w2, h, alpha=alpha).add_(tail)
    if len(xs) == 1:
        return [r.view(x.shape)]
    return [s.transpose(0, 1) for s in r.view(len(xs), c, b, *x.shape[2:]).unbind(0)]

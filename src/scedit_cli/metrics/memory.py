"""Training memory: what a step holds, counted, and the peak the device reports.

Two figures, both from the same step:

- accounted (any device): parameters + buffers + gradients + optimizer state +
  the bytes autograd saves for backward. The saved bytes are counted with
  `torch.autograd.graph.saved_tensors_hooks`, each storage once, parameters
  excluded (already counted), and attributed to the module region that was
  running when they were saved (e.g. the U-Net's `down_blocks`), so "SCEdit
  stores no encoder activations" is a measured fact, not an assumption; on a
  CPU also the reordered copies of frozen conv weights (`prepack`).
- peak: on CUDA `torch.cuda.max_memory_allocated` over the step; on a CPU the
  same quantity counted from the tensors themselves (`TensorPeak`: what is at
  rest before the step plus the most bytes the step's own tensors held at one
  time, temporaries included), and also the process's peak resident set
  (Linux `VmHWM`, reset before the step through `/proc/self/clear_refs`;
  elsewhere `ru_maxrss`, a lifetime peak, flagged so), which also holds the
  allocator's and the libraries' own memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import sys
import weakref
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..prepack import reordered_nbytes

OUTSIDE = "(outside)"


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    ptr = st.data_ptr()
    if ptr == 0:
        return None
    return (str(t.device), ptr)


def storage_owner(t: torch.Tensor):
    """What holds `t`'s bytes and is freed with them: its storage, or itself for oneDNN's opaque tensors,
    which have none."""
    return t if t.is_mkldnn else t.untyped_storage()


def _storage_nbytes(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


class SavedTensorCounter:
    """Count the bytes autograd saves for backward while active, per module region.

    `regions` maps a name to a module; a tensor saved while that module's
    forward runs is attributed to it (hooks are prepended so that forward
    pre-hooks of other code, e.g. SCEdit's skip editor, count inside the
    region). Storages of `exclude` tensors (parameters) are not counted.
    """

    def __init__(self, regions: Mapping[str, nn.Module] | None = None, exclude: Iterable[torch.Tensor] = ()):
        self.regions = dict(regions or {})
        self._exclude = {k for k in (_storage_key(t) for t in exclude) if k is not None}
        self._seen: set[tuple[str, int]] = set()
        self._stack: list[str] = []
        self._handles: list = []
        self._ctx = None
        self.by_region: dict[str, int] = {name: 0 for name in self.regions}
        self.by_region.setdefault(OUTSIDE, 0)
        self.tensors = 0

    @property
    def total(self) -> int:
        return sum(self.by_region.values())

    def _pack(self, t: torch.Tensor):
        key = _storage_key(t)
        if key is not None and key not in self._exclude and key not in self._seen:
            self._seen.add(key)
            region = self._stack[-1] if self._stack else OUTSIDE
            self.by_region[region] = self.by_region.get(region, 0) + _storage_nbytes(t)
            self.tensors += 1
        return t

    @staticmethod
    def _unpack(t):
        return t

    def __enter__(self) -> "SavedTensorCounter":
        for name, region in self.regions.items():
            def pre(mod, args, name=name):
                self._stack.append(name)

            def post(mod, args, out, name=name):
                if self._stack and self._stack[-1] == name:
                    self._stack.pop()

            # A ModuleList has no forward of its own: hook each of its members.
            members = list(region) if isinstance(region, (nn.ModuleList, nn.ModuleDict)) else [region]
            if isinstance(region, nn.ModuleDict):
                members = list(region.values())
            for module in members:
                self._handles.append(module.register_forward_pre_hook(pre, prepend=True))
                self._handles.append(module.register_forward_hook(post, always_call=True))
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles = []
        self._stack = []


class TensorPeak(TorchDispatchMode):
    """The bytes of the storages that operators make while active: live now (`live`) and at most (`peak`).

    What a caching allocator's `memory_allocated` would count for them, on any device: an operator's new
    outputs are counted when made and uncounted when their storage is freed; views and in-place results
    (outputs that alias an input) are not new. Tensors that existed before are not seen, nor operators run
    on other threads (the mode is thread-local: CUDA's backward runs on autograd's device threads)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def _freed(self, n: int) -> None:
        self.live -= n

    def made(self, owner, nbytes: int, func) -> None:
        """Count `nbytes` that `func` made, held by `owner` (a storage, or an opaque tensor, which has none)
        until it is freed; subclasses may also note where they came from."""
        if nbytes:
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(owner, self._freed, nbytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        returns = func._schema.returns
        if len(returns) == 1:  # one return, maybe a list of tensors (`_foreach_*`, `split`)
            returns = returns * len(outs)
        for t, ret in zip(outs, returns):
            if isinstance(t, torch.Tensor) and ret.alias_info is None and t.device.type != "meta":
                self.made(storage_owner(t), _storage_nbytes(t), func)
        return out


def unet_regions(unet: nn.Module) -> dict[str, nn.Module]:
    """The U-Net's top-level parts, in the order they run."""
    names = ["time_proj", "time_embedding", "add_embedding", "conv_in", "down_blocks", "mid_block", "up_blocks",
             "conv_norm_out", "conv_out"]
    return {n: getattr(unet, n) for n in names if isinstance(getattr(unet, n, None), nn.Module)}


# Parts of a diffusers U-Net upstream of the skip connections.
ENCODER_REGIONS = ("time_proj", "time_embedding", "add_embedding", "conv_in", "down_blocks", "mid_block")


def tensors_nbytes(tensors: Iterable[torch.Tensor]) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = _storage_key(t)
        if key is None or key in seen:
            continue
        seen.add(key)
        total += _storage_nbytes(t)
    return total


def optimizer_state_nbytes(optimizer: torch.optim.Optimizer | None) -> int:
    if optimizer is None:
        return 0
    out = []
    for state in optimizer.state.values():
        out.extend(v for v in state.values() if torch.is_tensor(v))
    return tensors_nbytes(out)


# --- peak resident set (CPU) ------------------------------------------------------------------

def _read_vmhwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> tuple[int, str]:
    """(bytes, how): VmHWM since the last reset, or ru_maxrss (process lifetime)."""
    v = _read_vmhwm()
    if v is not None:
        return v, "VmHWM"
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (r if sys.platform == "darwin" else r * 1024), "ru_maxrss (lifetime)"


@contextlib.contextmanager
def settled_heap():
    """Within the block, `release_memory` walks only what Python made inside it.

    One full collection, then everything alive is set aside (`gc.freeze`) until the block ends: the modules
    of torch, diffusers and transformers are millions of objects, and a full collection over them took
    ~0.5 s each on a 2-core CPU, twice per measured method. Garbage made inside the block is still
    collected; what was alive before and becomes garbage inside it waits for the next collection after.
    Nested blocks leave the freezing to the outermost."""
    outermost = gc.get_freeze_count() == 0
    if outermost:
        gc.collect()
        gc.freeze()
    try:
        yield
    finally:
        if outermost:
            gc.unfreeze()


def release_memory() -> None:
    """Free what Python and the allocators hold, so the next measurement starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


# --- the report -------------------------------------------------------------------------------

@dataclass
class MemoryReport:
    device: str
    params_bytes: int  # every parameter the step uses (frozen and trainable)
    buffers_bytes: int
    trainable_params: int
    grads_bytes: int  # one gradient per trainable parameter, in its dtype
    optimizer_bytes: int  # measured from the optimizer's state after a step
    saved_bytes: int  # bytes autograd saved for backward during the step
    reordered_bytes: int = 0  # CPU: frozen conv weights' reordered copies (`prepack`), held while training
    saved_by_region: dict[str, int] = field(default_factory=dict)
    saved_tensors: int = 0
    cuda_peak_bytes: int | None = None  # torch.cuda.max_memory_allocated over the step
    tensor_peak_bytes: int | None = None  # CPU: at rest + the step's tensors at most (`TensorPeak`)
    peak_rss_bytes: int | None = None  # CPU: process peak resident set over the step
    peak_rss_source: str | None = None

    @property
    def accounted_bytes(self) -> int:
        return (self.params_bytes + self.buffers_bytes + self.grads_bytes + self.optimizer_bytes + self.saved_bytes
                + self.reordered_bytes)

    @property
    def peak_bytes(self) -> int:
        """The figure to compare: the CUDA allocator's peak on a GPU, the tensors' peak on a CPU (the
        accounted total where neither was measured)."""
        if self.cuda_peak_bytes is not None:
            return self.cuda_peak_bytes
        return self.tensor_peak_bytes if self.tensor_peak_bytes is not None else self.accounted_bytes

    def saved_upstream_bytes(self, upstream: Iterable[str] = ENCODER_REGIONS) -> int:
        return sum(self.saved_by_region.get(r, 0) for r in upstream)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(accounted_bytes=self.accounted_bytes, peak_bytes=self.peak_bytes,
                 saved_encoder_bytes=self.saved_upstream_bytes())
        return d


def measure_step_memory(step: Callable[[], object], *, modules: Iterable[nn.Module],
                        trainable: Iterable[torch.Tensor], optimizer: torch.optim.Optimizer | None,
                        device: str | torch.device, regions: Mapping[str, nn.Module] | None = None) -> MemoryReport:
    """Run `step` once (a full training step: forward, backward, optimizer step) and account its memory.

    Call it after at least one warm-up step, so the optimizer state exists and
    the figure is the steady state of training.
    """
    device = torch.device(device)
    modules = list(modules)
    params = [p for m in modules for p in m.parameters()]
    buffers = [b for m in modules for b in m.buffers()]
    trainable = [p for p in trainable if p.requires_grad]
    release_memory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_reset = reset_peak_rss() if device.type == "cpu" else False
    # A CPU's backward runs on this thread, where the (thread-local) mode sees it; other devices' autograd
    # threads would not be seen.
    tensors = TensorPeak() if device.type == "cpu" else contextlib.nullcontext()
    with SavedTensorCounter(regions, exclude=params) as counter, tensors:
        step()
    cuda_peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        cuda_peak = int(torch.cuda.max_memory_allocated(device))
    rss, rss_how = (None, None)
    if device.type == "cpu":
        rss, rss_how = peak_rss()
        if not rss_reset:
            rss_how = f"{rss_how}, not reset"
    report = MemoryReport(
        device=str(device),
        params_bytes=tensors_nbytes(params),
        buffers_bytes=tensors_nbytes(buffers),
        trainable_params=sum(p.numel() for p in trainable),
        grads_bytes=sum(p.numel() * p.element_size() for p in trainable),
        optimizer_bytes=optimizer_state_nbytes(optimizer),
        saved_bytes=counter.total,
        reordered_bytes=reordered_nbytes(modules),
        saved_by_region=dict(counter.by_region),
        saved_tensors=counter.tensors,
        cuda_peak_bytes=cuda_peak,
        peak_rss_bytes=rss,
        peak_rss_source=rss_how,
    )
    if isinstance(tensors, TensorPeak):  # what was at rest before the step, plus the step's own at most
        report.tensor_peak_bytes = (report.params_bytes + report.buffers_bytes + report.optimizer_bytes
                                    + report.reordered_bytes + tensors.peak)
    return report


def gib(n: int | None) -> float | None:
    return None if n is None else n / 2**30


__all__ = ["ENCODER_REGIONS", "MemoryReport", "SavedTensorCounter", "TensorPeak", "measure_step_memory",
           "optimizer_state_nbytes", "peak_rss", "release_memory", "reset_peak_rss", "settled_heap", "storage_owner",
           "tensors_nbytes", "unet_regions"]

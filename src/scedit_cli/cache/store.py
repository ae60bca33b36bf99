"""The cache's files and keys: content fingerprints of the frozen models, and the store (a folder of
safetensors files holding whole entries; see the package docstring for the layout)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import SceditError
from ..fsutil import atomic_path

CACHE_VERSION = "1"


def content_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _config_dict(module) -> dict:
    cfg = getattr(module, "config", None)
    if cfg is None:
        return {}
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    # paths and library versions say where a model came from, not what it computes
    return {k: v for k, v in d.items() if not k.startswith("_") and k != "transformers_version"}


def module_fingerprint(modules, extra: dict | None = None) -> str:
    """sha256 over the modules' classes, configs and every weight byte (32 hex digits)."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, extra or {}], sort_keys=True, default=str).encode())
    for m in modules:
        h.update(type(m).__name__.encode())
        h.update(json.dumps(_config_dict(m), sort_keys=True, default=str).encode())
        for name, t in m.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:32]


def tokenizer_fingerprint(tok) -> str:
    vocab = sorted(tok.get_vocab().items())
    return content_key(type(tok).__name__, vocab, getattr(tok, "model_max_length", None),
                getattr(tok, "padding_side", None))


def vae_fingerprint(base) -> str:
    return module_fingerprint([base.vae], {"kind": "vae", "dtype": str(base.vae.dtype)})


def text_fingerprint(base) -> str:
    encs = base.text_encoders
    return module_fingerprint(encs, {"kind": "text", "sdxl": base.is_sdxl,
                                     "dtype": [str(next(e.parameters()).dtype) for e in encs],
                                     "tokenizers": [tokenizer_fingerprint(t) for t in base.tokenizers]})


class CacheStore:
    """Read side: which keys exist (from the files' headers), and their tensors (memory-mapped)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.index: dict[str, str] = {}  # key -> file name
        self.bad: dict[str, str] = {}  # key -> why the sample cannot be used (unreadable image...)
        self._handles: dict[str, Any] = {}
        self._tensors: dict[str, list[str]] = {}  # key -> its tensor names in its file (no scan per read)
        self.rescan()

    def rescan(self) -> None:
        from safetensors import safe_open

        self.index.clear()
        self.bad.clear()
        self._tensors.clear()
        if not self.folder.is_dir():
            return
        for f in sorted(self.folder.glob("*.safetensors")):
            try:
                with safe_open(str(f), "pt") as h:
                    names = list(h.keys())
                    meta = h.metadata() or {}
            except Exception as e:  # a foreign or damaged file: say which, never read from it
                raise SceditError(f"{f}: not a readable cache file ({type(e).__name__}); delete it and run "
                                  "`scedit prepare cache` again") from None
            per_key: dict[str, list[str]] = {}
            for n in names:
                per_key.setdefault(n.split("/", 1)[0], []).append(n)
            for k, tensors in per_key.items():
                self.index[k] = f.name
                self._tensors[k] = tensors
            for k, v in meta.items():
                if k.startswith("bad:"):
                    self.bad[k[4:]] = v
                    self.index[k[4:]] = f.name
                    self._tensors[k[4:]] = per_key.get(k[4:], [])

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __getstate__(self):  # DataLoader workers open their own handles
        d = dict(self.__dict__)
        d["_handles"] = {}
        return d

    def get(self, key: str) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        name = self.index[key]
        h = self._handles.get(name)
        if h is None:
            h = self._handles[name] = safe_open(str(self.folder / name), "pt")
        cut = len(key) + 1
        return {n[cut:]: h.get_tensor(n) for n in self._tensors.get(key, ())}

    def write(self, kind: str, entries: dict[str, dict[str, torch.Tensor]], bad: dict[str, str]) -> Path:
        """One file with these whole entries, written atomically; named by its keys."""
        from safetensors.torch import save_file

        keys = sorted([*entries, *bad])
        path = self.folder / f"{kind}-{content_key(keys)[:20]}.safetensors"
        tensors = {f"{k}/{f}": t.contiguous() for k, fields_ in entries.items() for f, t in fields_.items()}
        if not tensors:  # safetensors needs one tensor; a file of only unusable samples keeps a marker
            tensors = {"__marker__/empty": torch.zeros(1)}
        meta = {"scedit_cache": CACHE_VERSION, **{f"bad:{k}": v[:300] for k, v in bad.items()}}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        for k in keys:
            self.index[k] = path.name
            self._tensors[k] = [f"{k}/{f}" for f in entries.get(k, {})]
        self.bad.update(bad)
        return path

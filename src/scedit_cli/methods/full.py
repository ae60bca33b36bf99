"""`full`: fine-tune every U-Net weight (the paper's "Full" baseline, Table 1)."""

from __future__ import annotations

from pathlib import Path

from ..fsutil import atomic_dir
from .base import Method
from .config import FullConfig


class FullMethod(Method):
    Config = FullConfig
    trains_unet = True

    def setup(self, base) -> None:
        super().setup(base)
        base.unet.requires_grad_(True)

    def trainable_modules(self):
        return [self.unet]

    def extra_modules(self):
        return []

    def named_trainable_parameters(self):
        return [(n, p) for n, p in self.unet.named_parameters() if p.requires_grad]

    def predict(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, conditions=None):
        return self._unet(self.unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)

    def save(self, output_dir, base_source=None, extra=None):
        path = Path(output_dir) / "unet"
        with atomic_dir(path) as tmp:
            self.unet.save_pretrained(tmp, safe_serialization=True)
        return [path]

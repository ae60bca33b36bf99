"""`sc`: SC-Tuners on the skip connections (text-to-image, paper Sec. 3.2)."""

from __future__ import annotations

from pathlib import Path

from ..tuners import SCTuner, SCTunerConfig, SkipLayout, attach, save_tuner
from .base import Method


class SCMethod(Method):
    Config = SCTunerConfig  # the tuner file records the same settings

    def setup(self, base) -> None:
        super().setup(base)
        layout = SkipLayout.from_unet(base.unet)
        self.tuner = SCTuner(self.config, layout)
        self.editor = attach(base.unet, self.tuner)

    def trainable_modules(self):
        return [self.tuner]

    def named_trainable_parameters(self):
        return list(self.tuner.named_parameters())

    def predict(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, conditions=None):
        return self._unet(self.unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)

    def save(self, output_dir, base_source=None, extra=None):
        return [save_tuner(self.tuner, Path(output_dir) / "tuner", base=base_source, extra=extra)]

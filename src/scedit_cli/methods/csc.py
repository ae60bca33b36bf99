"""`csc`: CSC-Tuners fed by condition images (controllable generation, paper Sec. 3.3).

One CSC-Tuner per condition; with several conditions they are trained together
and combined with weights alpha (Eq. 7, default equal weights summing to 1).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SceditError
from ..tuners import CSCTuner, CSCTunerConfig, SkipLayout, attach, save_tuner
from ..conditions import condition_channels
from .base import Method
from .config import CSCConfig


class CSCMethod(Method):
    Config = CSCConfig

    def setup(self, base) -> None:
        super().setup(base)
        layout = SkipLayout.from_unet(base.unet)
        self.tuners = [
            CSCTuner(CSCTunerConfig.resolve(self.config, is_sdxl=base.is_sdxl, hint_downscale=base.vae_scale_factor,
                                            condition=cond, in_channels=condition_channels(cond)), layout)
            for cond in self.conditions
        ]
        n = len(self.tuners)
        self.weights = list(self.config.weights) if self.config.weights is not None else [1.0 / n] * n
        self.editor = attach(base.unet, self.tuners, self.weights)

    def trainable_modules(self):
        return list(self.tuners)

    def named_trainable_parameters(self):
        if len(self.tuners) == 1:
            return list(self.tuners[0].named_parameters())
        return [(f"{c}.{n}", p) for c, t in zip(self.conditions, self.tuners) for n, p in t.named_parameters()]

    def predict(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, conditions=None):
        if not conditions or len(conditions) != len(self.tuners):
            raise SceditError(
                f"method 'csc' needs {len(self.tuners)} condition image(s) ({', '.join(self.conditions)}), "
                f"got {0 if not conditions else len(conditions)}"
            )
        for tuner, cond in zip(self.tuners, conditions):
            tuner.set_condition(cond)
        try:
            return self._unet(self.unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)
        finally:
            for tuner in self.tuners:
                tuner.set_hints(None)

    def save(self, output_dir, base_source=None, extra=None):
        out = Path(output_dir)
        if len(self.tuners) == 1:
            return [save_tuner(self.tuners[0], out / "tuner", base=base_source, extra=extra)]
        return [
            save_tuner(t, out / f"tuner-{c}", base=base_source, extra={**(extra or {}), "alpha": w})
            for c, t, w in zip(self.conditions, self.tuners, self.weights)
        ]

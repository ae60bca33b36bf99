"""scedit: SCEdit skip-connection tuning for diffusers U-Nets."""

__version__ = "0.1.0"

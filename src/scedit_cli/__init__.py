"""scedit: SCEdit skip-connection tuning for diffusers U-Nets."""

__version__ = "0.1.0"

__all__ = ["apply_tuners", "__version__"]


def __getattr__(name: str):
    # Lazy: `import scedit_cli` stays cheap (no torch / diffusers) for the CLI and for tools that read
    # only the version.
    if name == "apply_tuners":
        from .diffusers_api import apply_tuners

        return apply_tuners
    raise AttributeError(f"module 'scedit_cli' has no attribute {name!r}")

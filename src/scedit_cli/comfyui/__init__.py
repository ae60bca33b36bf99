"""scedit's ComfyUI custom nodes: SCEdit Tuner and SCEdit Control, applied inside ComfyUI's own U-Net.

`scedit comfyui install COMFYUI_DIR` writes `custom_nodes/scedit/__init__.py`, which imports this
package from the Python ComfyUI runs in and re-exports the two mappings below. Example workflows
(ComfyUI API format) are in `workflows/`. The mappings load the nodes (and torch) on first use
(`lazy.lazy_exports`), so `scedit comfyui install` checks its folder without them.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# name -> the submodule that defines it
_EXPORTS = {"NODE_CLASS_MAPPINGS": "nodes", "NODE_DISPLAY_NAME_MAPPINGS": "nodes"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)

"""scedit's ComfyUI custom nodes: SCEdit Tuner and SCEdit Control, applied inside ComfyUI's own U-Net.

`scedit comfyui install COMFYUI_DIR` writes `custom_nodes/scedit/__init__.py`, which imports this
package from the Python ComfyUI runs in and re-exports the two mappings below. Example workflows
(ComfyUI API format) are in `workflows/`.
"""

from __future__ import annotations

from .loader import folder_paths_module, register_folder
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

if (_fp := folder_paths_module()) is not None:
    register_folder(_fp)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

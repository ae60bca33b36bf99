"""`scedit comfyui install COMFYUI_DIR`: a small loader in ComfyUI's custom_nodes, and models/scedit/.

The loader holds no node code: it imports `scedit_cli.comfyui` from the Python ComfyUI runs in, so
upgrading scedit there upgrades the nodes. If scedit is not installed in that Python, ComfyUI reports
the loader's ImportError, which says how to install it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import SceditError
from ..fsutil import write_text_atomic

NODE_FOLDER = "scedit"  # custom_nodes/scedit: not `scedit_cli`, which would shadow the package
MODELS_FOLDER = "scedit"

LOADER = '''"""scedit's ComfyUI nodes (SCEdit Tuner, SCEdit Control).

Written by `scedit comfyui install` (scedit {version}); the nodes themselves live in the scedit package
installed in the Python that runs ComfyUI. Run the command again after moving this folder.
"""

import importlib.util
import sys

SCEDIT_SOURCE = {source!r}

if importlib.util.find_spec("scedit_cli") is None:
    raise ImportError(
        "scedit is not installed in the Python that runs ComfyUI (" + sys.executable + "): run `"
        + sys.executable + " -m pip install " + SCEDIT_SOURCE + "` and restart ComfyUI"
    )

from scedit_cli.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
'''

# Where ComfyUI's own Python usually is: a venv in the checkout, or the Windows portable build's.
_PYTHON_CANDIDATES = ("venv/bin/python", ".venv/bin/python", "venv/Scripts/python.exe", ".venv/Scripts/python.exe",
                      "../python_embeded/python.exe")


@dataclass
class InstallResult:
    comfyui_dir: Path
    loader: Path
    models_dir: Path
    status: str  # "written", "replaced" or "unchanged"
    pip_command: str

    def to_dict(self) -> dict:
        return {"comfyui_dir": str(self.comfyui_dir), "loader": str(self.loader), "models_dir": str(self.models_dir),
                "status": self.status, "pip_command": self.pip_command}


def pip_source() -> str:
    """What to `pip install` to get this scedit: its checkout when it runs from one, else the release."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and (root / "src" / "scedit_cli").is_dir():
        return str(root)
    return f"scedit=={__version__}"


def comfyui_python(comfyui_dir: Path) -> Path | None:
    return next((comfyui_dir / c for c in _PYTHON_CANDIDATES if (comfyui_dir / c).is_file()), None)


def install(comfyui_dir: str | Path, force: bool = False) -> InstallResult:
    """Write `COMFYUI_DIR/custom_nodes/scedit/__init__.py` and create `COMFYUI_DIR/models/scedit/`."""
    root = Path(comfyui_dir).expanduser()
    if not (root / "main.py").is_file() or not (root / "comfy").is_dir():
        raise SceditError(
            f"{root}: not a ComfyUI checkout (needs main.py and a comfy/ folder); pass the folder ComfyUI starts from"
        )
    root = root.resolve()
    source = pip_source()
    text = LOADER.format(version=__version__, source=source)
    loader = root / "custom_nodes" / NODE_FOLDER / "__init__.py"
    if loader.is_file():
        current = loader.read_text(encoding="utf-8", errors="replace")
        if current == text:
            status = "unchanged"
        elif not force:
            raise SceditError(f"{loader}: exists and differs from the scedit loader; pass --force to replace it")
        else:
            status = "replaced"
    elif loader.parent.exists() and not loader.parent.is_dir():
        raise SceditError(f"{loader.parent}: exists and is not a folder; move it away and run install again")
    else:
        status = "written"
    if status != "unchanged":
        write_text_atomic(loader, text)
    models = root / "models" / MODELS_FOLDER
    models.mkdir(parents=True, exist_ok=True)
    python = comfyui_python(root)
    pip = f"{python or 'python'} -m pip install {source}"
    return InstallResult(root, loader, models, status, pip)

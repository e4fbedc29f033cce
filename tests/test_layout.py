"""The dependency rules of DESIGN.md, held by tests: the onboard room imports without the
workstation stack and never reaches into training, export, the simulator or the CLI."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import blocking_prelude

ROOT = Path(__file__).resolve().parents[1]
OFFBOARD = ("skyfix.train", "skyfix.export", "skyfix.sim", "skyfix.cli", "skyfix.bench", "skyfix.demo")


def _modules(package: str) -> list[str]:
    folder = ROOT / package
    return [f"skyfix.{package}"] + [f"skyfix.{package}.{m.name}" for m in pkgutil.iter_modules([str(folder)])]


def _import_in_subprocess(modules: list[str], blocked: tuple) -> subprocess.CompletedProcess:
    code = blocking_prelude(*blocked) + f"""
import importlib
for name in {modules!r}:
    importlib.import_module(name)
reached = sorted(m for m in sys.modules if m.startswith({OFFBOARD!r}))
print("REACHED", reached)
assert not reached, reached
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("package, blocked", [
    ("edge", ("torch", "rasterio", "tensorrt", "pycuda", "torchvision")),
    ("firmware_bridge", ("torch", "rasterio", "tensorrt", "pycuda", "faiss", "onnxruntime")),
])
def test_onboard_room_imports_without_workstation_stack(package, blocked):
    modules = _modules(package)
    assert len(modules) > 3  # the modules were found
    r = _import_in_subprocess(modules, blocked)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "REACHED []" in r.stdout


def test_the_block_really_blocks():
    """The check above can fail: importing a training module with torch blocked does."""
    r = _import_in_subprocess(["skyfix.train.towers"], ("torch",))
    assert r.returncode != 0 and "torch is blocked" in r.stderr


def _skyfix_imports(path: Path) -> set:
    """Every skyfix module a file imports, at module level or inside functions (AST)."""
    import ast
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("skyfix.")}


@pytest.mark.parametrize("package", ["edge", "firmware_bridge"])
def test_onboard_code_never_reaches_offboard_rooms_even_inside_functions(package):
    """The import check above only sees what importing runs; an import inside a function
    (edge/locate.py once reached export.models, and through it train and torch) is found here."""
    files = sorted((ROOT / package).glob("*.py"))
    assert len(files) > 3
    reached = {f"{f.name}: {m}" for f in files for m in _skyfix_imports(f) if m.startswith(OFFBOARD)}
    assert not reached, sorted(reached)

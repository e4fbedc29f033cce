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
    ("pack", ("torch", "rasterio", "tensorrt", "pycuda", "torchvision", "onnxruntime")),
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
        if isinstance(node, ast.ImportFrom) and node.module == "skyfix" and node.level == 0:
            names.update(f"skyfix.{a.name}" for a in node.names)  # from skyfix import bench
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
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


# The rooms from the bottom up (docs/design.md, "Dependency rules"): a module may import its own
# room and the rooms below it, never one above, at module level or inside a function.
RANKS = {"geo": 0, "config": 0, "errors": 0, "contracts": 0, "artifacts": 0,
         "firmware_bridge": 1, "pack": 2, "edge": 3, "render": 4, "tiles": 5, "sim": 5,
         "train": 6, "replay": 6, "export": 7, "doctor": 8, "demo": 8, "bench": 9, "cli": 10, "__init__": 10}


def _room(relative: Path) -> str:
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _source_files() -> list[Path]:
    return [f for f in sorted(ROOT.rglob("*.py"))
            if f.relative_to(ROOT).parts[0] not in ("tests", ".venv", "build", "out", "runs", "models")
            and not f.relative_to(ROOT).parts[0].startswith(".")]


def test_every_module_belongs_to_a_room_of_the_design_map():
    files = _source_files()
    assert len(files) > 50
    assert sorted({_room(f.relative_to(ROOT)) for f in files} - set(RANKS)) == []


def test_imports_only_go_down_the_rooms():
    upward = []
    for f in _source_files():
        own = _room(f.relative_to(ROOT))
        for module in _skyfix_imports(f):
            target = module.split(".")[1]
            if RANKS[target] > RANKS[own]:
                upward.append(f"{f.relative_to(ROOT)} ({own}) imports {module}")
    assert not upward, upward


def test_the_rank_check_can_fail(tmp_path):
    """_skyfix_imports sees an upward import inside a function, which the rank rule refuses."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from skyfix.export.models import load_embedder\n")
    assert RANKS["export"] > RANKS["edge"] and "skyfix.export.models" in _skyfix_imports(probe)


def test_tiles_imports_edge_only_inside_the_functions_that_need_it():
    import ast
    found = []
    for f in sorted((ROOT / "tiles").glob("*.py")):
        for node in ast.parse(f.read_text()).body:  # module level only
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skyfix.edge"):
                found.append(f"{f.name}: {node.module}")
    assert not found, found


def test_no_test_imports_the_benchmarks():
    files = sorted((ROOT / "tests").glob("*.py"))
    reached = [f.name for f in files if any(m == "skyfix.bench" or m.startswith("skyfix.bench.")
                                            for m in _skyfix_imports(f))]
    assert not reached, reached

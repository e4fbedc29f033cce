"""No unsafe deserialisation anywhere in skyfix: a scan of the code (AST, not grep), so a file a
user can swap (pack, model, config, gallery, checkpoint) can never run code when read."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}


def _sources():
    skip = {".venv", ".venv-ci", "tests", "out", "models", "runs", ".git"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Lines of `source` that import a pickle-like module or load without the safe option."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if FORBIDDEN_MODULES & {n.split(".")[0] for n in names}:
                found.append(f"{filename}:{node.lineno}: imports {names}")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        if name in ("eval", "exec") and isinstance(f, ast.Name):
            found.append(f"{filename}:{node.lineno}: {name}()")
        elif owner == "torch" and name == "load":
            v = _keyword(node, "weights_only")
            if not (isinstance(v, ast.Constant) and v.value is True):
                found.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
        elif owner in ("np", "numpy") and name == "load":
            v = _keyword(node, "allow_pickle")
            if not (isinstance(v, ast.Constant) and v.value is False):
                found.append(f"{filename}:{node.lineno}: np.load without allow_pickle=False")
        elif owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
            found.append(f"{filename}:{node.lineno}: yaml.{name} (use yaml.safe_load)")
    return found


def test_the_scanner_finds_what_it_looks_for():
    bad = ("import pickle\nimport torch, numpy as np, yaml\n"
           "torch.load('m.pt')\nnp.load('a.npy')\nyaml.load(open('c'))\neval('1')\n")
    assert len(unsafe_calls(bad)) == 5
    good = "torch.load('m.pt', weights_only=True)\nnp.load('a.npy', allow_pickle=False)\nyaml.safe_load('a')\nm.eval()\n"
    assert unsafe_calls(good) == []


def test_no_unsafe_deserialisation_in_skyfix():
    sources = _sources()
    assert len(sources) > 40  # the scan really reads the package
    found = [line for p in sources for line in unsafe_calls(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, "\n".join(found)


class _Boom:
    """Pickling this would run code on load: what an attacker's file would do."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle ran')",))


def test_a_gallery_with_a_pickled_object_is_refused_not_run(tmp_path):
    import numpy as np
    from skyfix.edge.gallery import FrameGallery
    from skyfix.errors import SkyfixError
    path = tmp_path / "gallery.npz"
    np.savez(path, vectors=np.zeros((1, 4), np.float32), t_us=np.zeros(1), frame_ids=np.array(["a"]),
             lat_lon=np.zeros((1, 2)), model_id=np.array([_Boom()], dtype=object))
    with pytest.raises(SkyfixError, match="cannot read frame gallery"):
        FrameGallery.load(path)


def test_pack_features_with_a_pickled_array_are_refused_not_run(tmp_path):
    import numpy as np
    import yaml
    from skyfix.artifacts import file_digest
    from skyfix.contracts import GeoTile
    from skyfix.edge.features import OpenCvExtractor
    from skyfix.errors import PackError
    from skyfix.geo import LocalFrame
    from skyfix.pack.canvas import MapCanvas
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.build import write_pack
    img = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    canvas = MapCanvas(img, np.ones((200, 200), bool), 1.0, LocalFrame(45.0, 7.0), -100.0, 100.0)
    pack = write_pack(tmp_path / "pack", canvas, [GeoTile(0, 45.0, 7.0, 0.0, 0.0, 100.0)],
                      np.eye(1, 8, dtype=np.float32), model_id="m", tile_px=64, stride_m=100.0,
                      extractors=(OpenCvExtractor("sift"),))
    desc = pack / "features" / "sift" / "desc.npy"
    np.save(desc, np.array([_Boom()], dtype=object), allow_pickle=True)
    manifest = yaml.safe_load((pack / "manifest.yaml").read_text())
    manifest["features"]["sift"]["files"]["desc.npy"] = file_digest(desc)  # the swap is consistent
    (pack / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(PackError, match="cannot be read"):
        TilePack.open(pack).map_features("sift")

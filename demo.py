"""`skyfix demo`: from a fresh clone to a simulated flight in the loop, in one command."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from skyfix.config import load_config

REPO = Path(__file__).resolve().parent
SHARED_COLORADO = REPO / ".." / "shared" / "data" / "colorado_z18" / "mosaic_epsg3857.tif"


def pick_map(ortho: Optional[str], out: Path, source_gsd_m: Optional[float]):
    """(map path, source GSD or None, description): the user's, the shared Colorado, or generated."""
    if ortho:
        return Path(ortho), source_gsd_m, f"your map {ortho}"
    if SHARED_COLORADO.exists():
        return SHARED_COLORADO.resolve(), None, "the shared Colorado map (../shared/data/colorado_z18)"
    from skyfix.tiles.synthetic import write_synthetic_map
    path = out / "generated_map.png"
    if not path.exists():
        write_synthetic_map(path)
    return path, 0.5, f"a generated map ({path}, 1 km at 0.5 m/px; ../shared/data not found)"


def run_demo(ortho: Optional[str], out: str | Path, duration_s: float, source_gsd_m: Optional[float]) -> int:
    from skyfix.edge.embedders import open_embedder
    from skyfix.sim.run import run_sim
    from skyfix.sim.score import format_summary
    from skyfix.errors import PackError
    from skyfix.tiles.build import build_pack
    from skyfix.pack.tilepack import TilePack
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    map_path, gsd, what = pick_map(ortho, out, source_gsd_m)
    # Your map's pack and flight in a folder of their own: a demo over another map keeps them.
    base = out / map_path.stem if ortho else out
    print(f"map: {what}; pack and flight in {base}")
    from skyfix.edge.models import DEFAULT, towers_path
    from skyfix.export.models import features_model_dir
    defaults = load_config()
    model_dir = towers_path(DEFAULT)  # shipped in the package
    uses_xfeat = defaults.nav.keypoints == "xfeat" or "xfeat" in defaults.tiles.features
    features_dir = features_model_dir("xfeat") if uses_xfeat else None  # exported into the cache once
    cfg = load_config(overrides={"sim": {"route": "lawnmower", "duration_s": duration_s, "length_m": 1500.0},
                                 "nav": {"features_model": features_dir}})
    pack_dir = base / "pack"
    embedder = open_embedder(model_dir, "sat")
    try:
        pack = TilePack.open(pack_dir, expect_model_id=embedder.model_id)
        if pack.manifest["source"] != str(map_path):
            raise PackError("pack is for another map")
    except PackError:
        build_pack(map_path, pack_dir, cfg, embedder, model_source=DEFAULT, source_gsd_m=gsd)
    print(f"flying {duration_s:.0f} s of a lawnmower survey at {cfg.sim.alt_agl_m:.0f} m AGL "
          "(real time; skyfix <-> simulated autopilot over MAVLink/UDP)...")
    summary = run_sim(pack_dir, open_embedder(model_dir, "drone"), cfg, out_dir=base / "flight")
    print(format_summary(summary))
    print(f"map used: {what}\nplot: {base / 'flight' / 'track.png'}; track: {base / 'flight' / 'track.csv'}")
    return 0

"""Region scale: FAISS search, index kinds on real embeddings, large builds, onboard memory (docs/scale.md)."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.bench.common import SHARED, _latency_ms, _rss_mb
from skyfix.errors import SkyfixError


def synthetic_embeddings(n: int, d: int, seed: int = 0, intrinsic_dim: int = 32):
    """Unit vectors on a low-dimensional manifold (as image embeddings are) plus noise.

    Returns (float32 n x d vectors, a function making q queries near random base vectors).
    """
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((intrinsic_dim, d), dtype=np.float32) / np.sqrt(intrinsic_dim)
    out = np.empty((n, d), np.float32)
    latents = rng.standard_normal((n, intrinsic_dim), dtype=np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        out[i:i + m] = latents[i:i + m] @ basis + 0.05 * rng.standard_normal((m, d), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)

    def queries(q: int) -> np.ndarray:
        z = latents[rng.choice(n, q, replace=False)] + 0.1 * rng.standard_normal((q, intrinsic_dim), dtype=np.float32)
        x = z @ basis + 0.05 * rng.standard_normal((q, d), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return out, queries


def _pack_search_rows(pack, queries: int) -> list[str]:
    """Table rows: a pack's global top-10 search and a 200 m prior-window search, random unit queries."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((queries, pack.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    it = iter(range(10 ** 9))
    ms = _latency_ms(lambda: pack.search(q[next(it) % queries][None], 10), 10, queries)
    rows = [f"| pack, exact, global top-10 | {len(pack)} | {np.percentile(ms, 50):.3f} | "
            f"{np.percentile(ms, 95):.3f} | {pack.manifest['index']} |"]
    e, n = float(pack.east_m.mean()), float(pack.north_m.mean())
    ms = _latency_ms(lambda: pack.search(q[next(it) % queries][None], 10, near=(e, n, 200.0)), 10, queries)
    rows.append(f"| pack, prior window r=200 m | {len(pack.ids_within(e, n, 200.0))} in window | "
                f"{np.percentile(ms, 50):.3f} | {np.percentile(ms, 95):.3f} | tile grid + window_search |")
    return rows


def bench_faiss(pack_path: str | None, n_synthetic: int, queries: int = 200) -> str:
    from skyfix.pack.tilepack import TileGrid, TilePack, make_index, window_search
    rows = ["| search | tiles | p50 ms | p95 ms | note |", "|---|---|---|---|---|"]
    if pack_path:
        rows += _pack_search_rows(TilePack.open(pack_path), queries)
    d = 512
    t0 = time.perf_counter()
    xb, make_queries = synthetic_embeddings(n_synthetic, d)
    q = make_queries(queries)
    gen_s = time.perf_counter() - t0
    flat = make_index("flat", xb)
    exact = flat.search(q, 10)[1]
    it = iter(range(10 ** 9))
    ms = _latency_ms(lambda: flat.search(q[next(it) % queries][None], 10), 3, 50)
    rows.append(f"| synthetic, exact flat, global | {n_synthetic:,} | {np.percentile(ms, 50):.2f} | "
                f"{np.percentile(ms, 95):.2f} | {d}-d on a 32-d manifold, {xb.nbytes / 2**30:.1f} GiB, made in {gen_s:.0f} s |")
    side = int(np.ceil(np.sqrt(n_synthetic)))  # a square region, a tile every 50 m
    east, north = (np.arange(n_synthetic) % side) * 50.0, (np.arange(n_synthetic) // side) * 50.0
    grid = TileGrid(east, north, 100.0)
    ce, cn = float(east.mean()), float(north.mean())
    for radius_m in (200.0, 1000.0):
        window = grid.within(ce, cn, radius_m)
        ms = _latency_ms(lambda: window_search(flat, grid.within(ce, cn, radius_m), q[next(it) % queries][None], 10),
                         3, 100)
        rows.append(f"| synthetic, exact flat, prior window r={radius_m:.0f} m | {window.size:,} in window | "
                    f"{np.percentile(ms, 50):.3f} | {np.percentile(ms, 95):.3f} | window found by the tile grid, its vectors scored |")
    t0 = time.perf_counter()
    ivf = make_index("ivfpq", xb)
    build_s = time.perf_counter() - t0
    approx = ivf.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])
    ms = _latency_ms(lambda: ivf.search(q[next(it) % queries][None], 10), 3, 100)
    import faiss
    inner = faiss.extract_index_ivf(ivf)
    code_mb = ivf.ntotal * inner.code_size / 2 ** 20
    rows.append(f"| synthetic, OPQ + IVF-PQ (nlist {inner.nlist}, {inner.code_size} B/vector, "
                f"nprobe {inner.nprobe}) | "
                f"{n_synthetic:,} | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 95):.2f} | "
                f"recall@10 vs exact {recall:.3f}; codes {code_mb:.0f} MB; built in {build_s:.0f} s |")
    # Compact codes find candidates; the candidates' full vectors (onboard: rows read from the
    # pack's file, 2 KB each) re-rank them exactly.
    for nprobe, shortlist in ((32, 100), (64, 200), (128, 200)):
        inner.nprobe = nprobe

        def refined(qv):
            cand = ivf.search(qv, shortlist)[1]
            out = []
            for row, c in zip(qv, cand):
                c = c[c >= 0]
                out.append(c[np.argsort(-(xb[c] @ row))[:10]])
            return out
        got = refined(q)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
        ms = _latency_ms(lambda: refined(q[next(it) % queries][None]), 3, 100)
        rows.append(f"| synthetic, OPQ + IVF-PQ nprobe {nprobe}, top {shortlist} re-ranked exactly | {n_synthetic:,} | "
                    f"{np.percentile(ms, 50):.2f} | {np.percentile(ms, 95):.2f} | recall@10 vs exact {recall:.3f}; "
                    f"codes {code_mb:.0f} MB + {shortlist} rows read per query |")
    return "\n".join(rows)


def make_region_geotiff(out: Path, size_km: float, shared: Path = SHARED) -> Path:
    """A large test orthophoto: the shared Colorado GeoTIFF (1.19 km square, 2560 px, EPSG:3857)
    laid out n x n times, every other copy mirrored (so neighbouring copies join without a seam),
    written tile by tile as a tiled JPEG GeoTIFF. The content repeats: it measures memory and
    speed, not retrieval on real unique ground."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window
    if out.is_file():
        return out
    src_path = shared / "colorado_z18" / "mosaic_epsg3857.tif"
    with rasterio.open(src_path) as src:
        img, tr, crs = src.read(), src.transform, src.crs
    side = img.shape[1]
    ground_m = side * tr.a * math.cos(math.radians(39.0))  # Web Mercator metres -> ground at 39 N
    n = int(math.ceil(size_km * 1000 / ground_m))
    profile = dict(driver="GTiff", width=n * side, height=n * side, count=3, dtype="uint8", crs=crs,
                   transform=Affine(tr.a, 0, tr.c, 0, tr.e, tr.f), tiled=True, blockxsize=512, blockysize=512,
                   compress="jpeg", jpeg_quality=90, photometric="ycbcr", BIGTIFF="IF_SAFER")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for i in range(n):
            for j in range(n):
                part = img[:, ::-1 if i % 2 else 1, ::-1 if j % 2 else 1]
                dst.write(np.ascontiguousarray(part), window=Window(j * side, i * side, side, side))
    tmp.rename(out)
    return out


def _run_peak_rss_mb(cmd: list) -> tuple[float, float, float]:
    """Run a command; (wall time s, peak RSS of its largest process MB, peak RSS summed over the
    process and its children MB, sampled every 0.5 s with psutil: a Dask build's workers)."""
    import resource
    import subprocess
    import threading
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak_tree = [0.0]

    def sample():
        try:
            import psutil
        except ImportError:
            return
        while proc.poll() is None:
            try:
                p = psutil.Process(proc.pid)
                total = sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
                peak_tree[0] = max(peak_tree[0], total / 2 ** 20)
            except psutil.Error:
                pass
            time.sleep(0.5)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    if proc.wait() != 0:
        raise SkyfixError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    watcher.join()
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return time.perf_counter() - t0, largest, peak_tree[0]


def bench_build(out: str = "out/bench", size_km: float = 10.0, model: str = "imagenet",
                features: str = "xfeat,sift", features_model: str = "models/xfeat", index: str = "flat",
                cluster: Optional[str] = None) -> str:
    """Build a pack of a size_km x size_km region (make_region_geotiff) with `skyfix tiles build`
    in a child process (with `cluster`, its embedding on Dask); print its time, peak RSS and size."""
    tif = make_region_geotiff(Path(out) / f"region_{size_km:g}km.tif", size_km)
    pack = Path(out) / f"region_{size_km:g}km"
    cmd = [sys.executable, "-m", "skyfix.cli", "tiles", "build", "--ortho", str(tif), "--out", str(pack),
           "--model", model, "--gsd-m", "0.5", "--index", index, "--features", features,
           "--features-model", features_model] + (["--cluster", cluster] if cluster else [])
    wall_s, rss_mb, tree_mb = _run_peak_rss_mb(cmd)
    from skyfix.pack.tilepack import TilePack
    p = TilePack.open(pack)
    m = p.manifest["map"]
    disk_mb = sum(f.stat().st_size for f in pack.rglob("*") if f.is_file()) / 2 ** 20
    area_km2 = m["width_px"] * m["height_px"] * m["gsd_m"] ** 2 / 1e6
    return ("| region | map px | tiles | features | embedding on | build s | peak RSS MB: largest process / "
            "all processes | pack MB |\n|---|---|---|---|---|---|---|---|\n"
            f"| {area_km2:.0f} km2 at {m['gsd_m']} m/px | {m['width_px']} x {m['height_px']} | {len(p)} | "
            f"{features} | {cluster or 'this process'} | {wall_s:.0f} | {rss_mb:.0f} / {tree_mb:.0f} | {disk_mb:.0f} |")


def onboard_probe(pack_path: str, model: str, features_model: str, frames: int = 20, seed: int = 0) -> dict:
    """Start the onboard loop's parts on a pack as `skyfix fly` does (pack, model, matcher), then
    locate `frames` rendered views at random tiles. Returns start-up time, RSS after start-up and
    at the end (MB), and ms per located frame. Run in a fresh process (`bench_onboard`)."""
    from skyfix.config import load_config
    from skyfix.contracts import Frame, Telemetry
    from skyfix.edge.fly import startup
    from skyfix.edge.locate import locate_frame
    from skyfix.edge.navigator import Navigator
    from skyfix.render.views import ViewPose, render_view
    t0 = time.perf_counter()
    cfg = load_config(overrides={"nav": {"pack": pack_path, "model": model, "features_model": features_model}})
    pack, embedder, cam = startup(cfg)
    nav = Navigator(pack, embedder, cam, cfg.nav)
    startup_s, rss_start = time.perf_counter() - t0, _rss_mb()
    blocks, rng, ms, hits, fixes = pack.map_blocks(), np.random.default_rng(seed), [], 0, 0
    for i in range(frames):
        tile = pack.tile(int(rng.integers(len(pack))))
        yaw = float(rng.uniform(0, 2 * math.pi))
        col, row = blocks.px_from_en(tile.east_m, tile.north_m)
        half = int(300 / blocks.gsd_m)  # the ground a 120 m high 70 deg view can see, and more
        region = blocks.region_px(int(row) - half, int(row) + half, int(col) - half, int(col) + half)
        image = render_view(region, cam, ViewPose(tile.east_m, tile.north_m, 120.0, 0.0, 0.0, yaw))[0]
        t_us = int(i * 1e6)
        t1 = time.perf_counter()
        m, _, _ = locate_frame(nav, Frame(image, t_us, Telemetry(t_us, 0.0, 0.0, yaw, 120.0), f"view{i}"))
        ms.append((time.perf_counter() - t1) * 1e3)
        fixes += m is not None
        if m is not None and math.hypot(m.east_m - tile.east_m, m.north_m - tile.north_m) < 10:
            hits += 1
    return {"tiles": len(pack), "startup_s": startup_s, "rss_start_mb": rss_start, "rss_end_mb": _rss_mb(),
            "locate_ms_p50": float(np.median(ms)), "located": fixes, "located_within_10m": hits, "frames": frames}


def bench_onboard(packs: list, model: str = "imagenet", features_model: str = "models/xfeat",
                  frames: int = 20) -> str:
    """onboard_probe on each pack, each in a fresh process so memory and start-up are its own."""
    import json
    import subprocess
    rows = ["| pack | tiles | pack MB | start-up s: checksums read / recorded | RSS after start-up MB | "
            "RSS after frames MB | locate ms p50 | located / within 10 m of the view |", "|---|---|---|---|---|---|---|---|"]
    from skyfix.artifacts import VERIFIED_FILE
    for pack in packs:
        for stamp in Path(pack).rglob(VERIFIED_FILE):  # the first start reads every checksum
            stamp.unlink()
        runs = []
        for _ in range(2):
            code = (f"import json; from skyfix.bench import onboard_probe; "
                    f"print(json.dumps(onboard_probe({str(pack)!r}, {model!r}, {features_model!r}, {frames})))")
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        r = runs[1]
        disk_mb = sum(f.stat().st_size for f in Path(pack).rglob("*") if f.is_file()) / 2 ** 20
        rows.append(f"| {pack} | {r['tiles']} | {disk_mb:.0f} | {runs[0]['startup_s']:.2f} / {r['startup_s']:.2f} | "
                    f"{r['rss_start_mb']:.0f} | {r['rss_end_mb']:.0f} | {r['locate_ms_p50']:.0f} | "
                    f"{r['located']} / {r['located_within_10m']} of {r['frames']} |")
    return "\n".join(rows)


REAL_MAPS = ["Colorado"] + [f"LEVIR-CD {i}{d}" for d in "AB" for i in range(1, 6)]


def real_embeddings(n: int, model: str, tower: str, seed: int, shared: Path = SHARED,
                    batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """float32 n x D embeddings of real map tiles: the shared maps (REAL_MAPS: Colorado; LEVIR-CD
    1-5 on both dates) rendered at random places, headings 0-360 deg, sizes 80-125 m and
    photometric change, embedded by `tower` of `model`, and the map of each (index into
    REAL_MAPS). The distribution an index meets, not isotropic noise."""
    from skyfix.config import load_config
    from skyfix.export.models import load_embedder
    from skyfix.render.views import photometric
    from skyfix.tiles.ortho import load_canvas
    from tqdm import tqdm
    canvases = [load_canvas(shared / "colorado_z18" / "mosaic_epsg3857.tif")]
    canvases += [load_canvas(shared / "levircd" / d / f"test_{i}.png", source_gsd_m=0.5) for d in "AB" for i in range(1, 6)]
    area = np.array([c.width_m * c.height_m for c in canvases])
    embedder = load_embedder(model, tower, load_config().model)
    rng = np.random.default_rng(seed)
    out, source = np.empty((n, embedder.dim), np.float32), np.empty(n, np.int64)
    for start in tqdm(range(0, n, batch), unit="batch", desc=f"embed {n} real tiles ({tower})"):
        images = []
        for i in range(min(batch, n - start)):
            source[start + i] = rng.choice(len(canvases), p=area / area.sum())
            c = canvases[source[start + i]]
            size = 100.0 * rng.uniform(0.8, 1.25)
            e0, n0, e1, n1 = c.bounds_en()
            e, nn = rng.uniform(e0 + 0.8 * size, e1 - 0.8 * size), rng.uniform(n0 + 0.8 * size, n1 - 0.8 * size)
            images.append(photometric(c.render(e, nn, size, embedder.input_px, rng.uniform(0, 360))[0], rng))
        out[start:start + len(images)] = embedder.embed(np.stack(images))
    return out, source


def _matched_gaussian(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n unit vectors drawn from a Gaussian with the real embeddings' mean and covariance (a
    million-tile stand-in with their spectrum, where embedding a million real tiles takes hours)."""
    rng = np.random.default_rng(seed)
    mean = real.mean(0)
    w, v = np.linalg.eigh(np.cov(real, rowvar=False))
    proj = (v * np.sqrt(np.clip(w, 0, None))).T.astype(np.float32)
    out = np.empty((n, real.shape[1]), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        out[i:i + m] = rng.standard_normal((m, real.shape[1]), dtype=np.float32) @ proj + mean
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _reranked_search(index, xb: np.ndarray, shortlist: int):
    """A search function: the index's top `shortlist`, re-ranked exactly on xb; top 10 ids per query."""
    def search(qv):
        cand = index.search(qv, shortlist)[1]
        return [c[c >= 0][np.argsort(-(xb[c[c >= 0]] @ row))[:10]] for row, c in zip(qv, cand)]
    return search


HASH_TRAIN_SCENES = ([{"ortho": str(SHARED / "colorado_z18" / "mosaic_epsg3857.tif"), "split": "area"}]
                     + [{"ortho": str(SHARED / "levircd" / "A" / f"test_{i}.png"), "source_gsd_m": 0.5,
                         "drone_from": str(SHARED / "levircd" / "B" / f"test_{i}.png"), "split": "train"}
                        for i in range(1, 6)])


def hash_pairs(out: str, model: str, pairs: int = 6000, seed: int = 0) -> tuple:
    """Training pairs for the bench's hash heads, embedded once and cached in OUT: drone views and
    tiles of the shared maps (Colorado's west two thirds, LEVIR-CD 1-5 date A tiles with date B
    drone views; other renders than the bench's queries). (drone N x D, sat N x D, labels N)."""
    from skyfix.config import train_config
    from skyfix.export.models import load_embedder
    from skyfix.train.hashing import embed_pairs
    from skyfix.train.trainer import build_datasets
    path = Path(out) / f"hash_pairs_{pairs}.npz"
    if not path.is_file():
        cfg = train_config(None, None, {"scenes": HASH_TRAIN_SCENES, "seed": seed})
        train_pairs, _, _ = build_datasets(cfg)
        d, s, y = embed_pairs(train_pairs, *(load_embedder(model, t, cfg.model) for t in ("drone", "sat")),
                              pairs, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, drone=d, sat=s, labels=y)
    with np.load(path, allow_pickle=False) as z:
        return z["drone"], z["sat"], z["labels"]


def hash_heads(out: str, model: str, bits_list, pairs: int = 6000, seed: int = 0) -> dict:
    """Hash heads for the index bench, {bits: HashProjection}: fitted as `skyfix train-hash`
    fits them, on `hash_pairs`; with bits < 0 the same head untrained (random rotation,
    thresholds at the mean)."""
    from skyfix.train.hashing import HashHead, fit_hash_head
    d, s, y = hash_pairs(out, model, pairs, seed)
    heads = {}
    for bits in bits_list:
        if bits > 0:
            heads[bits] = fit_hash_head(d, s, y, bits, seed=seed, log=print).projection()
        else:
            head = HashHead(d.shape[1], -bits)
            head.init_from(np.concatenate([d, s]), seed)
            heads[bits] = head.projection()
    return heads


def _index_rows(name: str, xb: np.ndarray, q: np.ndarray, kinds: tuple, heads: dict | None = None) -> list:
    """Build each index kind over xb; recall@10 against exact search, latency, memory, build time.
    Kinds hashB / randB: a binary index of the learned / untrained B-bit head in `heads`."""
    import faiss
    from skyfix.pack.hashing import HashIndex
    from skyfix.pack.tilepack import make_index
    exact = make_index("flat", xb).search(q, 10)[1]
    rows, it = [], iter(range(10 ** 9))

    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "binary":  # 512-bit sign codes after a random rotation, trained thresholds
            index = faiss.index_factory(xb.shape[1], "LSHrt")
            index.train(xb)
            index.add(xb)
        elif kind.startswith(("hash", "rand")):
            bits = int(kind[4:])
            index = HashIndex.build(heads[bits if kind.startswith("hash") else -bits], xb)
        else:
            index = make_index(kind, xb)
        build_s = time.perf_counter() - t0
        mem_mb = (len(faiss.serialize_index_binary(index.binary)) if isinstance(index, HashIndex)
                  else len(faiss.serialize_index(index))) / 2 ** 20
        variants = [("", lambda qv: index.search(qv, 10)[1])]
        if kind == "ivfpq":
            inner = faiss.extract_index_ivf(index)
            variants = [("nprobe 32", lambda qv: (setattr(inner, "nprobe", 32), index.search(qv, 10)[1])[1]),
                        ("nprobe 128, top 200 re-ranked", lambda qv: (setattr(inner, "nprobe", 128),
                                                                      _reranked_search(index, xb, 200)(qv))[1])]
        if kind == "binary" or kind.startswith(("hash", "rand")):
            variants.append(("top 200 re-ranked", _reranked_search(index, xb, 200)))
        if kind.startswith("hash") and len(xb) > 200_000:
            variants.append(("top 1000 re-ranked", _reranked_search(index, xb, 1000)))
        for label, search in variants:
            got = search(q)
            recall = np.mean([len(set(np.asarray(a).tolist()) & set(b.tolist())) / 10 for a, b in zip(got, exact)])
            ms = _latency_ms(lambda: search(q[next(it) % len(q)][None]), 3, 100)
            rows.append(f"| {name} | {len(xb):,} | {kind} {label} | {recall:.3f} | {np.percentile(ms, 50):.2f} | "
                        f"{np.percentile(ms, 95):.2f} | {mem_mb:.0f} | {build_s:.0f} |")
    return rows


def _cached_real(path: Path, n: int, model: str, tower: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """real_embeddings, computed once and kept in `path` (.npz)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        vectors, source = real_embeddings(n, model, tower, seed)
        np.savez(path, vectors=vectors, source=source)
    with np.load(path, allow_pickle=False) as z:
        return z["vectors"], z["source"]


def bench_index(model: str = "imagenet", out: str = "out/bench", n_real: int = 100_000,
                n_large: int = 1_000_000, queries: int = 500,
                kinds=("flat", "hnsw", "ivfpq", "binary", "rand128", "hash64", "hash128", "hash256")) -> str:
    """Index recall/latency/memory/build time on real tile embeddings (n_real, cached in OUT) and
    on a million drawn with their covariance; queries are drone-tower embeddings of real views."""
    xb, _ = _cached_real(Path(out) / f"real_embeddings_{n_real}.npz", n_real, model, "sat", 0)
    q, _ = _cached_real(Path(out) / f"real_queries_{queries}.npz", queries, model, "drone", 1)
    bits = [int(k[4:]) * (1 if k.startswith("hash") else -1) for k in kinds if k.startswith(("hash", "rand"))]
    heads = hash_heads(out, model, bits) if bits else {}
    rows = ["| embeddings | vectors | index | recall@10 vs exact | p50 ms | p95 ms | index MB | build s |",
            "|---|---|---|---|---|---|---|---|"]
    rows += _index_rows("real tiles", xb, q, kinds, heads)
    if n_large:
        rows += _index_rows("covariance-matched", _matched_gaussian(xb, n_large, seed=2), q,
                            tuple(k for k in kinds if k != "hnsw" or n_large <= 200_000), heads)
    return "\n".join(rows)


def bench_distractors(model: str = "imagenet", out: str = "out/bench", views: int = 200,
                      n_matched: int = 1_000_000, window_m: float = 200.0) -> str:
    """Drone -> satellite R@1 of the Colorado pack's tiles alone and hidden among distractor
    tiles of other places: real tiles of the LEVIR-CD maps (from bench index's cache) and
    n_matched covariance-matched vectors; global search vs the prior window (radius window_m
    around the true position: distractors elsewhere never enter it)."""
    from skyfix.config import load_config
    from skyfix.export.models import load_embedder
    from skyfix.pack.tilepack import TilePack
    from skyfix.train.evaluate import embed_queries, make_queries, similarity_to_tiles
    cfg = load_config()
    cfg.eval.views = views
    pack = TilePack.open(Path(out) / "colorado")
    drone = load_embedder(model, "drone", cfg.model)
    qs = make_queries(pack, pack.canvas(), cfg.camera, cfg.eval, drone.input_px, progress=False)
    vectors = embed_queries(drone, qs.crops)   # Q x R x D (R assumed headings)
    S, P = similarity_to_tiles(pack, vectors), pack.contains(qs.east_m, qs.north_m)
    top1 = np.argmax(S, axis=1)
    hit = P[np.arange(len(top1)), top1]
    real, source = _cached_real(Path(out) / "real_embeddings_100000.npz", 100_000, model, "sat", 0)
    sets = [("LEVIR-CD real tiles (10 maps, augmented)", real[source != 0])]
    if n_matched:
        sets.append(("covariance-matched vectors", _matched_gaussian(real, n_matched, seed=3)))
    flat = vectors.reshape(-1, vectors.shape[-1])
    near = np.hypot(pack.east_m[None] - qs.east_m[:, None], pack.north_m[None] - qs.north_m[:, None]) <= window_m
    in_window = np.where(near, S, -np.inf)
    win_top1 = np.argmax(in_window, axis=1)
    rows = ["| tiles searched | distractors | R@1 global | R@1 prior window r=200 m |", "|---|---|---|---|",
            f"| Colorado pack, {len(pack)} tiles | none | {hit.mean():.3f} | "
            f"{P[np.arange(len(win_top1)), win_top1].mean():.3f} |"]
    for name, d in sets:
        best = np.full(len(flat), -np.inf, np.float32)
        for i in range(0, len(d), 100_000):
            best = np.maximum(best, (flat @ d[i:i + 100_000].T).max(axis=1))
        dmax = best.reshape(vectors.shape[:2]).max(axis=1)
        beaten = hit & (S[np.arange(len(top1)), top1] > dmax)
        rows.append(f"| Colorado among {len(d):,} {name} | {len(d):,} | {beaten.mean():.3f} | "
                    f"{P[np.arange(len(win_top1)), win_top1].mean():.3f} (none enters the window) |")
    return "\n".join(rows)


def bench_ivf_sweep(out: str = "out/bench", n_large: int = 1_000_000) -> str:
    """OPQ + IVF-PQ at a million covariance-matched vectors: recall@10 and latency over nprobe and
    the re-ranked shortlist (bench index's cached real embeddings and queries)."""
    import faiss
    from skyfix.pack.tilepack import make_index
    xb, _ = _cached_real(Path(out) / "real_embeddings_100000.npz", 100_000, "imagenet", "sat", 0)
    q, _ = _cached_real(Path(out) / "real_queries_500.npz", 500, "imagenet", "drone", 1)
    big = _matched_gaussian(xb, n_large, seed=2)
    exact = make_index("flat", big).search(q, 10)[1]
    ivf = make_index("ivfpq", big)
    inner, it = faiss.extract_index_ivf(ivf), iter(range(10 ** 9))
    rows = ["| nprobe | re-ranked | recall@10 | p50 ms | p95 ms |", "|---|---|---|---|---|"]
    for nprobe in (48, 64, 96, 128):
        for shortlist in (200, 400):
            inner.nprobe = nprobe
            search = _reranked_search(ivf, big, shortlist)
            got = search(q)
            recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(got, exact)])
            ms = _latency_ms(lambda: search(q[next(it) % len(q)][None]), 3, 200)
            rows.append(f"| {nprobe} | {shortlist} | {recall:.3f} | {np.percentile(ms, 50):.2f} | "
                        f"{np.percentile(ms, 95):.2f} |")
    return "\n".join(rows)

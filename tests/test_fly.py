"""`skyfix fly` startup checks and frame sources (no camera or autopilot hardware here)."""
import numpy as np
import pytest

from skyfix.config import load_config
from skyfix.errors import ModelMismatch, PackError, SkyfixError
from tests.conftest import SHARED, need_shared
from tests.helpers import free_udp_port


@pytest.fixture()
def small_pack(tmp_path, textured_canvas, tiny_onnx_dir):
    from skyfix.edge.embedders import open_embedder
    from skyfix.tiles.build import tile_grid
    from skyfix.tiles.embed import embed_tiles
    from skyfix.edge.features import OpenCvExtractor
    from skyfix.tiles.build import write_pack
    sat = open_embedder(tiny_onnx_dir, "sat")
    tiles, _ = tile_grid(textured_canvas, 200.0, 200.0)
    return write_pack(tmp_path / "pack", textured_canvas, tiles,
                      embed_tiles(textured_canvas, tiles, sat, 8, progress=False),
                      model_id=sat.model_id, tile_px=sat.input_px, stride_m=200.0,
                      extractors=(OpenCvExtractor("sift"),))


def test_fly_refuses_missing_pack(tmp_path, tiny_onnx_dir):
    from skyfix.edge.fly import run_fly
    cfg = load_config(overrides={"nav": {"pack": str(tmp_path / "none"), "model": str(tiny_onnx_dir)}})
    with pytest.raises(PackError, match="not a TilePack"):
        run_fly(cfg)


def test_fly_refuses_other_model(small_pack, tmp_path, tiny_towers):
    import copy

    import torch

    from skyfix.edge.fly import run_fly
    from skyfix.export.onnx_export import export_onnx
    other = copy.deepcopy(tiny_towers)
    with torch.no_grad():
        other.drone.proj.weight.mul_(-1)
    other_dir = export_onnx(other, tmp_path / "other", log=lambda *_: None)
    cfg = load_config(overrides={"nav": {"pack": str(small_pack), "model": str(other_dir)}})
    with pytest.raises(ModelMismatch, match="rebuild the pack"):
        run_fly(cfg)


def test_fly_refuses_without_a_link_and_says_it_assumes_flat_ground(small_pack, tiny_onnx_dir, tmp_path, caplog):
    import cv2
    from skyfix.edge.fly import run_fly
    (tmp_path / "frames").mkdir()
    cv2.imwrite(str(tmp_path / "frames" / "a.png"), np.zeros((240, 320, 3), np.uint8))
    cfg = load_config(overrides={
        "nav": {"pack": str(small_pack), "model": str(tiny_onnx_dir), "keypoints": "sift",
                "source": str(tmp_path / "frames")},
        "bridge": {"connection": f"udpin:127.0.0.1:{free_udp_port()}"},
        "camera": {"width_px": 320, "height_px": 240}})
    with pytest.raises(SkyfixError, match="no HEARTBEAT"):
        run_fly(cfg, link_wait_s=0.5)
    assert any("flat ground at the take-off height assumed" in m for m in caplog.messages)  # the measured limit, said at start


def test_folder_source_reads_exif_and_survives_a_corrupt_file(tmp_path):
    import shutil

    from skyfix.edge.sources import FolderSource
    src_dir = need_shared(SHARED / "odm_toledo")
    names = sorted(p.name for p in src_dir.glob("*.JPG"))[:2]
    for n in names:
        shutil.copy(src_dir / n, tmp_path / n)
    (tmp_path / "zz_corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    src = FolderSource(tmp_path)
    first = src.read()
    assert first.image_rgb.shape == (900, 1200, 3)
    # EXIF GPS of the first photo matches gps_summary.txt (41.549408, -83.69892).
    assert first.exif["lat_deg"] == pytest.approx(41.549408, abs=2e-5)
    assert first.exif["lon_deg"] == pytest.approx(-83.69892, abs=2e-5)
    assert first.exif["time_utc"] is not None
    src.read()
    bad = src.read()
    assert bad.image_rgb is None and bad.source_id == "zz_corrupt.jpg"
    assert src.read() is None


def test_capture_source_refuses_missing_video(tmp_path):
    from skyfix.edge.sources import open_source
    with pytest.raises(SkyfixError, match="not found"):
        open_source(str(tmp_path / "none.mp4"))


class _FlakyCamera:
    """A capture device that stalls for a while (what a loose CSI cable does): no mock library,
    just the two calls CaptureSource makes."""

    def __init__(self, script):
        self.script, self.opened = script, 0

    def __call__(self, uri):
        self.opened += 1
        return self

    def isOpened(self):
        return True

    def read(self):
        ok = self.script.pop(0) if self.script else True
        return (True, np.full((48, 64, 3), 90, np.uint8)) if ok else (False, None)

    def release(self):
        pass


def test_a_stalled_live_camera_never_ends_the_loop_and_is_reopened():
    from skyfix.edge.sources import CaptureSource
    cam = _FlakyCamera([True] * 3 + [False] * 25 + [True] * 3)
    src = CaptureSource("0", open_capture=cam)
    src.STALL_WAIT_S = 0.0
    frames = [src.read() for _ in range(31)]
    assert all(f is not None for f in frames)              # never the end of the stream
    assert [f.image_rgb is not None for f in frames] == [True] * 3 + [False] * 25 + [True] * 3
    assert src.reopens == 2 and cam.opened == 3            # reopened after 10 and 20 failures


def test_a_video_file_ends_when_it_ends(tmp_path):
    from skyfix.edge.sources import CaptureSource
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    cam = _FlakyCamera([True, False])
    src = CaptureSource(str(video), open_capture=cam)
    assert src.read() is not None and src.read() is None


def test_fly_checks_the_camera_before_waiting_for_the_autopilot(small_pack, tiny_onnx_dir, tmp_path):
    cfg = load_config(overrides={
        "nav": {"pack": str(small_pack), "model": str(tiny_onnx_dir), "keypoints": "sift",
                "source": str(tmp_path / "no_such_video.mp4")},
        "bridge": {"connection": "udpin:127.0.0.1:0"}})
    import threading

    from skyfix.edge.fly import run_fly
    raised = []

    def fly():
        with pytest.raises(SkyfixError, match="video not found"):
            run_fly(cfg, link_wait_s=3600.0)  # had it waited for a HEARTBEAT first, an hour
        raised.append(True)
    worker = threading.Thread(target=fly, daemon=True)
    worker.start()
    worker.join(timeout=120.0)  # a deadline for a loaded machine, far below the hour
    assert raised and not worker.is_alive()

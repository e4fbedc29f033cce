"""Property tests (hypothesis) of everything that takes outside input: the MAVLink intake, the
pack's manifest and tile table, config YAML, the replay telemetry CSV and image files. Each run
is bounded (max_examples) so CI stays fast; the number of inputs is printed with -s."""
import math
import shutil

import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from skyfix.errors import SkyfixError  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


# ---- MAVLink intake -----------------------------------------------------------------------------
def _messages():
    mav2 = pytest.importorskip("pymavlink.dialects.v20.common")
    mav = mav2.MAVLink(None, srcSystem=1, srcComponent=1)
    u32 = st.integers(0, 2 ** 32 - 1)
    i32 = st.integers(-2 ** 31, 2 ** 31 - 1)
    return st.one_of(
        st.builds(lambda t, r, p, y: mav.attitude_encode(t, r, p, y, 0, 0, 0), u32, floats, floats, floats),
        st.builds(lambda t, la, lo, a, ra: mav.global_position_int_encode(t, la, lo, a, ra, 0, 0, 0, 0),
                  u32, i32, i32, i32, i32),
        st.builds(lambda t, rel, amsl: mav.altitude_encode(t, 0.0, amsl, 0.0, rel, 0.0, 0.0), st.integers(0, 2 ** 64 - 1),
                  floats, floats),
        st.builds(lambda t, lo, hi, cur: mav.distance_sensor_encode(t, lo, hi, cur, 0, 0, 25, 0),
                  u32, st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 65535)),
        st.builds(lambda u, t: mav.system_time_encode(u, t), st.integers(0, 2 ** 64 - 1), u32))


@FUZZ
@given(data=st.data())
def test_telemetry_intake_never_raises_and_never_stores_the_impossible(data):
    from skyfix.firmware_bridge.telemetry import MAX_HEIGHT_M, MIN_HEIGHT_M, TelemetryStore
    store = TelemetryStore()
    msgs = data.draw(st.lists(_messages(), min_size=1, max_size=30))
    for i, msg in enumerate(msgs):
        store.update(msg, 100.0 + 0.05 * i)
    tel = store.at(100.0 + 0.05 * len(msgs), max_age_s=1e9)
    for v in (tel.roll_rad, tel.pitch_rad, tel.yaw_rad):
        assert v is None or (math.isfinite(v) and abs(v) <= math.pi + 1e-6)
    for h in (tel.alt_agl_m, tel.alt_msl_m):
        assert h is None or (math.isfinite(h) and MIN_HEIGHT_M <= h <= MAX_HEIGHT_M)
    unix = store.unix_us(100.0)
    assert 0 < unix < 2 ** 62


@FUZZ
@given(data=st.data())
def test_random_bytes_and_real_packets_before_an_autopilot_are_dropped(data):
    """Junk around well-formed packets (valid CRCs: random bytes alone almost never pass it, so
    they would never reach the intake) goes through pymavlink's parser, as the bridge reads
    it, and the bridge's intake: no exception, every packet that parses is counted as dropped,
    nothing is taken before an autopilot is bound."""
    from pymavlink.dialects.v20 import common as mav2
    from skyfix.firmware_bridge.link import MavlinkBridge
    packer = mav2.MAVLink(None, srcSystem=1, srcComponent=1)
    msgs = data.draw(st.lists(_messages(), min_size=1, max_size=8))
    # Junk without start markers (0xFD, 0xFE): a marker in the junk swallows the packet after it,
    # as on a real noisy link, and this test wants every packet to reach the intake.
    junk = st.binary(max_size=60).map(lambda b: b.replace(b"\xfd", b"\x00").replace(b"\xfe", b"\x00"))
    blob = data.draw(junk) + b"".join(m.pack(packer) + data.draw(junk) for m in msgs)
    parser = mav2.MAVLink(None)
    parser.robust_parsing = True
    bridge = MavlinkBridge("udpin:127.0.0.1:9")  # never opened: only its intake is used
    parsed = [m for m in parser.parse_buffer(blob) or [] if m.get_type() != "BAD_DATA"]
    for msg in parsed:
        bridge._take(msg, 1.0)
    assert len(parsed) == len(msgs)  # every well-formed packet reached the intake through the junk
    assert bridge.telemetry.received == 0 and bridge.dropped["unbound"] == len(parsed)


# ---- the pack: manifest and tile table ------------------------------------------------------------
@pytest.fixture(scope="module")
def good_pack(tmp_path_factory):
    from skyfix.contracts import GeoTile
    from skyfix.geo import LocalFrame
    from skyfix.pack.canvas import MapCanvas
    from skyfix.tiles.build import write_pack
    img = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    canvas = MapCanvas(img, np.ones((200, 200), bool), 1.0, LocalFrame(45.0, 7.0), -100.0, 100.0)
    tiles = [GeoTile(i, 45.0, 7.0, e, 0.0, 100.0) for i, e in enumerate((-50.0, 50.0))]
    return write_pack(tmp_path_factory.mktemp("fuzz") / "pack", canvas, tiles, np.eye(2, 8, dtype=np.float32),
                      model_id="m", tile_px=64, stride_m=100.0)


def _mutations():
    junk = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 12, 10 ** 12), floats, st.text(max_size=20),
                     st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
    return st.lists(st.tuples(st.sampled_from(["schema_version", "model_id", "dim", "metric", "files", "counts",
                                               "local_frame", "map", "grid", "region", "features", "index"]),
                              st.sampled_from(["set", "delete", "nested"]), junk), min_size=1, max_size=4)


@FUZZ
@given(mutations=_mutations())
def test_a_mangled_manifest_is_a_clear_pack_error(good_pack, tmp_path_factory, mutations):
    from skyfix.errors import ModelMismatch, PackError
    from skyfix.pack.tilepack import TilePack
    pack = tmp_path_factory.mktemp("m") / "pack"
    shutil.copytree(good_pack, pack)
    manifest = yaml.safe_load((pack / "manifest.yaml").read_text())
    for key, how, value in mutations:
        if how == "delete":
            manifest.pop(key, None)
        elif how == "nested" and isinstance(manifest.get(key), dict) and manifest[key]:
            manifest[key][sorted(manifest[key])[0]] = value
        else:
            manifest[key] = value
    (pack / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    try:
        TilePack.open(pack).search(np.eye(1, 8, dtype=np.float32), 1)
    except (PackError, ModelMismatch) as exc:
        assert str(pack) in str(exc)  # it says which pack


@FUZZ
@given(table=st.binary(max_size=400))
def test_a_corrupt_tile_table_is_refused(good_pack, tmp_path_factory, table):
    from skyfix.artifacts import file_digest
    from skyfix.errors import PackError
    from skyfix.pack.tilepack import TilePack
    pack = tmp_path_factory.mktemp("t") / "pack"
    shutil.copytree(good_pack, pack)
    (pack / "tiles.csv").write_bytes(table)
    manifest = yaml.safe_load((pack / "manifest.yaml").read_text())
    manifest["files"]["tiles.csv"] = file_digest(pack / "tiles.csv")  # a consistent, wrong table
    (pack / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(PackError):
        TilePack.open(pack)


# ---- config YAML ----------------------------------------------------------------------------------
def _names_where(exc, path, doc) -> None:
    """A config error says where: the file, or the key (section.key) that is wrong."""
    text = str(exc)
    keys = [str(k) for k in doc] if isinstance(doc, dict) else []
    assert (str(path) in text or any(k and k in text for k in keys) or "config key" in text
            or "expected a mapping" in text), text

yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), floats, st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                           max_leaves=12)


@FUZZ
@given(doc=st.one_of(yaml_values, st.dictionaries(st.sampled_from(["nav", "tiles", "bridge", "sim", "camera",
                                                                    "model", "train", "eval", "other"]),
                                                   yaml_values, max_size=4)))
def test_any_yaml_config_loads_or_is_a_clear_config_error(tmp_path_factory, doc):
    from skyfix.config import load_config
    from skyfix.errors import ConfigError
    path = tmp_path_factory.mktemp("c") / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_config(path)
    except ConfigError as exc:
        _names_where(exc, path, doc)


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_as_config_is_a_clear_config_error_or_loads(tmp_path_factory, text):
    from skyfix.config import load_config
    from skyfix.errors import ConfigError
    path = tmp_path_factory.mktemp("c") / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        _names_where(exc, path, None)


# ---- replay inputs: the telemetry CSV and image files ---------------------------------------------
cells = st.one_of(st.just(""), st.text(max_size=8), st.floats(allow_nan=True, allow_infinity=True).map(str))


@FUZZ
@given(rows=st.lists(st.lists(cells, min_size=0, max_size=6), max_size=6),
       header=st.sampled_from(["name,roll_deg,pitch_deg,yaw_deg,agl_m", "name,agl_m", "roll_deg,agl_m", ""]))
def test_telemetry_csv_parses_or_names_the_bad_line(tmp_path_factory, rows, header):
    from skyfix.edge.sources import read_telemetry_csv
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    path.write_text("\n".join([header] + [",".join(r) for r in rows]) + "\n")
    try:
        table = read_telemetry_csv(path)
    except SkyfixError as exc:
        assert str(path) in str(exc)
        return
    for values in table.values():
        for v in values.values():
            assert v is None or math.isfinite(v)


@FUZZ
@given(blob=st.binary(max_size=2000), suffix=st.sampled_from([".jpg", ".png"]))
def test_a_corrupt_image_in_a_folder_is_a_frame_without_pixels(tmp_path_factory, blob, suffix):
    pytest.importorskip("PIL")
    from skyfix.edge.sources import FolderSource
    folder = tmp_path_factory.mktemp("img")
    (folder / f"a{suffix}").write_bytes(b"\xff\xd8\xff\xe1" + blob if suffix == ".jpg" else blob)
    src = FolderSource(folder)
    frame = src.read()
    assert frame is not None and frame.source_id == f"a{suffix}"
    assert frame.image_rgb is None or frame.image_rgb.dtype == np.uint8
    assert src.read() is None

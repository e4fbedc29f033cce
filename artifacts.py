"""Writing artifacts atomically and fingerprinting their files."""
from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(out_dir: str | Path):
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir` in one rename.

    On any error the temporary folder is removed and an existing `out_dir` is left untouched.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        replace_directory(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_directory(new: Path, out_dir: Path) -> None:
    """Move the finished folder `new` to `out_dir`, replacing an existing one (the old one is
    renamed aside first, so `out_dir` is at every moment either the old or the new folder)."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    new.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_digest(path: str | Path) -> dict:
    """{'bytes': size, 'sha256': hex} of a file, to detect truncation and corruption."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": h.hexdigest()}


VERIFIED_FILE = ".verified.yaml"  # files whose full digest was checked, with their size and mtime then


def digest_problem(folder: Path, name: str, digest: dict, full: bool = False) -> "str | None":
    """Why folder/name does not match its manifest digest {'bytes', 'sha256'}: 'missing',
    'truncated' (size differs) or 'corrupt' (checksum differs); None when it matches.

    The size is always checked. The SHA-256 (a full read: a gigabyte for a 100 km2 pack) is
    skipped when a full check of this very digest was recorded in folder/.verified.yaml and the
    file's size and modification time are unchanged since; `full` always re-hashes (`skyfix
    tiles inspect`). A successful full check is recorded (not where the folder is read-only)."""
    import os
    import yaml
    path = folder / name
    if not path.is_file():
        return "missing"
    st = path.stat()
    if st.st_size != digest["bytes"]:
        return "truncated"
    stamp_path = folder / VERIFIED_FILE
    try:
        stamps = yaml.safe_load(stamp_path.read_text()) if stamp_path.is_file() else {}
    except (OSError, yaml.YAMLError):
        stamps = {}
    stamps = stamps if isinstance(stamps, dict) else {}
    seen = stamps.get(name)
    if not full and seen == [st.st_size, st.st_mtime_ns, digest["sha256"]]:
        return None
    if file_digest(path)["sha256"] != digest["sha256"]:
        return "corrupt"
    stamps[name] = [st.st_size, st.st_mtime_ns, digest["sha256"]]
    try:
        tmp = stamp_path.with_name(f"{VERIFIED_FILE}.{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(stamps))
        os.replace(tmp, stamp_path)
    except OSError:
        pass  # a read-only pack is hashed at every start
    return None

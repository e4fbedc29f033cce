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

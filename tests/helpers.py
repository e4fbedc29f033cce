"""Helpers shared by the tests: free ports, seeded synthetic embeddings, blocked imports."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from skyfix.sim.autopilot import free_udp_port  # noqa: F401  (one implementation, re-exported)


def unit_vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    """Seeded float32 n x d unit vectors (isotropic: for logic, not for recall figures)."""
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


BLOCK_IMPORTS = '''
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = names
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(name + " is blocked in this test")
        return None
sys.meta_path.insert(0, _Block(NAMES))
'''


def blocking_prelude(*names: str) -> str:
    """Python source that makes `import name` (and its submodules) fail, for a subprocess."""
    return f"NAMES = {set(names)!r}\n" + BLOCK_IMPORTS


def wait_until(holds: Callable[[], bool], timeout_s: float = 10.0, every_s: float = 0.01) -> bool:
    """Poll `holds` until it is true (True) or timeout_s passes (False): tests wait for what
    they need to see, with a deadline generous enough for a loaded machine, never a fixed sleep."""
    end = time.monotonic() + timeout_s
    while True:
        if holds():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(every_s)

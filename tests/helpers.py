"""Helpers shared by the tests: free ports, seeded synthetic embeddings, blocked imports."""
from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
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


class TileServer:
    """A threaded HTTP server of a {z}/{x}/{y} folder on 127.0.0.1: `fail` (a set of paths, or
    'all') answers 500, `stall_s` holds every answer that long, `key` requires ?key=...; every
    request path is counted."""

    def __init__(self, root: Path):
        self.root, self.fail, self.stall_s, self.key, self.requests = root, set(), 0.0, None, []
        self.capabilities = None  # a WMTS GetCapabilities document served at /wmts
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server API)
                path, _, query = self.path.partition("?")
                server.requests.append(path)
                if server.stall_s:
                    time.sleep(server.stall_s)
                if server.fail == "all" or path in server.fail:
                    return self.send_error(500, "tile server failure")
                if server.key is not None and query != f"key={server.key}":
                    return self.send_error(403, "bad key")
                file = server.root / path.lstrip("/")
                if path == "/wmts" and server.capabilities:
                    data, kind = server.capabilities.encode(), "application/xml"
                elif file.is_file():
                    data, kind = file.read_bytes(), "image/png"
                else:
                    return self.send_error(404)
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a stall test)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{{z}}/{{x}}/{{y}}.png"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

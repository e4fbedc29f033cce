"""Learned binary codes of tile embeddings, and the Hamming index that searches them.

A hash head (`train/hashing.py`) is one linear map of the towers' embedding, trained with the
towers or after them: bits = sign(W x + b). Both modalities share it, so a drone view's code is
compared with the tiles' codes by Hamming distance. The head is stored as an .npz (`HashProjection`)
in the model folder and copied into each tile set it indexes, so a pack carries what its
queries need. This module needs numpy and faiss only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skyfix.errors import PackError, require

HASH_FILE = "hash.npz"   # in a tile set folder (binary index) or a model folder (the trained head)


class HashProjection:
    """bits = sign(weight @ x + bias) for float32 N x D embeddings; codes packed 8 bits a byte."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, model_id: str = ""):
        weight, bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32).reshape(-1)
        if weight.ndim != 2 or weight.shape[0] != bias.shape[0] or weight.shape[0] % 8 or weight.shape[0] == 0:
            raise PackError(f"a hash head needs B x D weights and B biases with B a multiple of 8, "
                            f"got {weight.shape} and {bias.shape}")
        self.weight, self.bias, self.model_id = weight, bias, model_id

    @property
    def bits(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        """uint8 N x bits/8 codes of float32 N x D vectors (in chunks: a million tiles fit)."""
        x = np.atleast_2d(np.asarray(vectors, np.float32))
        if x.shape[1] != self.dim:
            raise PackError(f"hash head takes {self.dim}-d embeddings, got {x.shape[1]}-d")
        out = np.empty((len(x), self.bits // 8), np.uint8)
        for i in range(0, len(x), 65536):
            out[i:i + 65536] = np.packbits(x[i:i + 65536] @ self.weight.T + self.bias > 0, axis=1)
        return out

    def save(self, path: str | Path) -> Path:
        np.savez(path, weight=self.weight, bias=self.bias, model_id=np.array(self.model_id))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "HashProjection":
        """Read a head saved by `save`; PackError when it is missing or not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["weight"], z["bias"], str(z["model_id"]) if "model_id" in z else "")
        except (OSError, ValueError, KeyError) as exc:
            raise PackError(f"{path} is not a readable hash head ({exc}); train one with "
                            "`skyfix train hash`") from exc


class HashIndex:
    """A FAISS binary index of tile codes behind the float index's interface: `search` takes
    float32 query embeddings, codes them with the same projection, and returns the nearest by
    Hamming distance, scored 1 - 2 * distance / bits (the cosine the codes approximate)."""

    def __init__(self, projection: HashProjection, binary_index):
        if binary_index.d != projection.bits:
            raise PackError(f"binary index of {binary_index.d} bits, hash head of {projection.bits}")
        self.projection, self.binary = projection, binary_index

    @classmethod
    def build(cls, projection: HashProjection, vectors: np.ndarray) -> "HashIndex":
        faiss = require("faiss")
        index = faiss.IndexBinaryFlat(projection.bits)
        index.add(projection.codes(vectors))
        return cls(projection, index)

    @property
    def ntotal(self) -> int:
        return int(self.binary.ntotal)

    @property
    def d(self) -> int:
        return self.projection.dim

    def search(self, queries: np.ndarray, k: int):
        """(scores N x k, ids N x k) of the k codes nearest each float32 N x D query."""
        dist, ids = self.binary.search(self.projection.codes(queries), int(k))
        return (1.0 - 2.0 * dist / self.projection.bits).astype(np.float32), ids

    def write(self, folder: Path) -> list:
        """index.faiss (the binary index) and hash.npz (the head) into `folder`; the names written."""
        faiss = require("faiss")
        faiss.write_index_binary(self.binary, str(Path(folder) / "index.faiss"))
        self.projection.save(Path(folder) / HASH_FILE)
        return ["index.faiss", HASH_FILE]

    @classmethod
    def read(cls, folder: Path) -> "HashIndex":
        faiss = require("faiss")
        try:
            binary = faiss.read_index_binary(str(Path(folder) / "index.faiss"))
        except RuntimeError as exc:
            raise PackError(f"pack {folder}: index.faiss is not a readable binary index ({exc}); "
                            "rebuild the pack") from exc
        return cls(HashProjection.load(Path(folder) / HASH_FILE), binary)

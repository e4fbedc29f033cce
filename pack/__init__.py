"""The TilePack format: what onboard reads (manifest, tile table, index, map blocks, map features)
and the plain writers of those files. Below `edge`: it needs numpy, OpenCV, PyYAML and faiss only,
and never imports `edge`, `tiles` (building), `train` or `export`."""

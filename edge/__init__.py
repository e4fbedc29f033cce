"""Onboard: frame sources, crop, embedders, search, refinement, filter, gate, navigator, simulator.

Imports without torch: torch is loaded only by the torch embedder, inside the function.
"""

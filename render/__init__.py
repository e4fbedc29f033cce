"""Rendering views from a map (pinhole camera with attitude, photometric change): one room that the
simulator, training and export's calibration all use. Above `edge` (it uses the camera model),
below `sim`, `train`, `export` and `bench`."""

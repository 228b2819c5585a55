"""Inference: a trained run applied to images -> prediction tables. Plain, tiled (large images),
two-stage coarse-to-fine, the merging of boxes across tiles, and the detector -> classifier cascade."""

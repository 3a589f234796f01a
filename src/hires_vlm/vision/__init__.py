"""Stage 2 of the pipeline — vision: one batched forward of a transformers vision tower over all views."""

from .tower import VisionTower

__all__ = ["VisionTower"]

"""Pipelines of gts-hf (installed as ``gts_hf.pipelines``)."""

from .gts_few_shot import GTSFewShotPipeline

__all__ = ["GTSFewShotPipeline"]

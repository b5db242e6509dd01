"""Builders of whole models."""

from keras_infformer.models.infinite_former_lm import InfiniteFormerLM

__all__ = ["InfiniteFormerLM"]

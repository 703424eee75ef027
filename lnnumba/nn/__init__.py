"""Stateful pieces with params/forward/backward."""

from .norm import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]

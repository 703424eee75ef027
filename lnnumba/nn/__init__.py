"""Stateful pieces with params/forward/backward."""

from .cells import GRU, LSTM, RNN
from .norm import LayerNorm, RMSNorm

__all__ = ["GRU", "LSTM", "RNN", "LayerNorm", "RMSNorm"]

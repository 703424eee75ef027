"""Stateful pieces with params/forward/backward."""

from .cells import GRU, LSTM, RNN
from .layers import BatchNorm, Embedding, Linear
from .norm import LayerNorm, RMSNorm

__all__ = ["BatchNorm", "Embedding", "GRU", "LSTM", "Linear", "LayerNorm", "RMSNorm", "RNN"]

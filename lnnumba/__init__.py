"""lnnumba: layer normalization (Ba, Kiros & Hinton, 2016) as Numba kernels.

Public names are re-exported here; nothing is defined in this module.
"""

from .nn.cells import GRU, LSTM, RNN
from .nn.norm import LayerNorm, RMSNorm
from .norm import (
    layer_norm,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm,
    rms_norm_backward,
    rms_norm_forward,
)

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "LayerNorm",
    "RMSNorm",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_forward",
]

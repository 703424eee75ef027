"""lnnumba: layer normalization (Ba, Kiros & Hinton, 2016) as Numba kernels.

Public names are re-exported here; nothing is defined in this module.
"""

from ._memory import release_memory
from .nn.cells import GRU, LSTM, RNN
from .nn.layers import BatchNorm, Embedding, Linear
from .nn.norm import LayerNorm, RMSNorm
from .nn.stack import Stacked
from .norm import (
    layer_norm,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm,
    rms_norm_backward,
    rms_norm_forward,
)
from .serve import (
    gru_from_torch,
    layer_norm_from_torch,
    linear_from_torch,
    load_model,
    lstm_from_torch,
    rms_norm_from_torch,
    save_model,
)
from .train import Adam, clip_grad_norm, load_checkpoint, save_checkpoint, softmax_cross_entropy

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "BatchNorm",
    "Embedding",
    "GRU",
    "Linear",
    "LSTM",
    "RNN",
    "Stacked",
    "LayerNorm",
    "RMSNorm",
    "clip_grad_norm",
    "gru_from_torch",
    "layer_norm_from_torch",
    "linear_from_torch",
    "load_model",
    "lstm_from_torch",
    "rms_norm_from_torch",
    "save_model",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "load_checkpoint",
    "release_memory",
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_forward",
    "save_checkpoint",
    "softmax_cross_entropy",
]

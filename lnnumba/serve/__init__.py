"""Serving: model files and weight import."""

from .models import load_model, save_model
from .torch_import import (
    gru_from_torch,
    layer_norm_from_torch,
    linear_from_torch,
    lstm_from_torch,
    rms_norm_from_torch,
)

__all__ = [
    "gru_from_torch",
    "layer_norm_from_torch",
    "linear_from_torch",
    "load_model",
    "lstm_from_torch",
    "rms_norm_from_torch",
    "save_model",
]

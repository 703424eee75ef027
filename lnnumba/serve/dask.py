"""Batch inference on data larger than one machine, with Dask (optional: ``pip install
"dask[array]" distributed``). The kernels release the GIL, so a worker's threads run in parallel.

- ``layer_norm_dask(x, weight=None, bias=None, *, eps=1e-5, axis=-1)``: layer norm of a
  ``dask.array`` (the normalized dimensions are brought into single chunks; the others stay
  chunked).
- ``apply_model_dask(x, path)``: a model saved with ``save_model`` applied to a ``dask.array``:
  a recurrent model (cell or Stacked) to x (T, B, I) chunked along B, returning its outputs
  (T, B, H), through ``predict`` (nothing kept for a backward pass); any other model to x
  (..., features) chunked along the leading dimensions. Each worker loads the model file once.
"""

import functools

import numpy as np

from ..nn.cells import _Cell
from ..nn.stack import Stacked
from ..norm import layer_norm
from .models import load_model


def _dask_array():
    try:
        import dask.array as da
    except ImportError:
        raise ImportError(
            "lnnumba's Dask helpers need dask: pip install 'dask[array]' distributed"
        ) from None
    return da


def layer_norm_dask(x, weight=None, bias=None, *, eps=1e-5, axis=-1):
    """Layer norm of a ``dask.array``, lazily: returns a ``dask.array`` of the same shape."""
    da = _dask_array()
    if not isinstance(x, da.Array):
        raise TypeError(f"layer_norm_dask: x must be a dask.array, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("layer_norm_dask: x is 0-d; expected at least 1 dimension")
    a = axis + x.ndim if axis < 0 else axis
    if not 0 <= a < x.ndim:
        raise ValueError(f"layer_norm_dask: axis {axis} is out of range for {x.ndim} dimensions")
    x = x.rechunk({d: -1 for d in range(a, x.ndim)})  # each block holds whole rows
    dtype = np.result_type(x.dtype, np.float64) if x.dtype.kind in "iub" else x.dtype
    return x.map_blocks(layer_norm, weight, bias, eps=eps, axis=axis, dtype=dtype)


@functools.lru_cache(maxsize=8)
def _model(path):
    return load_model(path)


def _apply(block, path):
    model = _model(path)
    if isinstance(model, (_Cell, Stacked)):
        return model.predict(block)[0]  # no cache for a backward pass: less memory
    return model.forward(block)[0]


def apply_model_dask(x, path):
    """A saved model applied to a ``dask.array``, lazily (see the module docstring)."""
    da = _dask_array()
    if not isinstance(x, da.Array):
        raise TypeError(f"apply_model_dask: x must be a dask.array, got {type(x).__name__}")
    path = str(path)
    model = _model(path)  # fail early on a bad file, and learn the output size
    if isinstance(model, (_Cell, Stacked)):
        if x.ndim != 3:
            raise ValueError(
                f"apply_model_dask: a recurrent model needs x of shape (T, B, I), "
                f"got {x.ndim} dimensions"
            )
        x = x.rechunk({0: -1, 2: -1})  # whole sequences, whole features; split over B
        H = model.hidden_size * getattr(model, "D", 1)
        chunks = (x.chunks[0], x.chunks[1], (H,))
    else:
        x = x.rechunk({x.ndim - 1: -1})
        out = model.forward(np.zeros((1, x.shape[-1]), model.dtype))[0].shape[-1]
        chunks = x.chunks[:-1] + ((out,),)
    return x.map_blocks(_apply, path, chunks=chunks, dtype=model.dtype)

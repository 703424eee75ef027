"""Checkpoints: parameters, optimizer state and metadata in one ``.npz``, written atomically and
read without pickle (a checkpoint from a stranger cannot run code)."""

import numpy as np

from .. import _npz

FORMAT = "lnnumba-checkpoint"
VERSION = 1


def save_checkpoint(path, params, opt=None, meta=None):
    """Writes ``params`` (dict name -> array), the optimizer's state (an object with
    ``state_dict()``, such as ``Adam``) and ``meta`` (a JSON-serializable dict: step, data
    position, RNG state...) to ``path``.

    The file is written to a temporary file beside ``path``, flushed to disk and renamed over it,
    so a crash mid-save leaves the previous checkpoint whole. Raises TypeError for arrays of
    object dtype or metadata that is not JSON, FileNotFoundError if path's directory does not
    exist.
    """
    arrays = {}
    for k, v in params.items():
        v = np.asarray(v)
        if v.dtype.kind not in "biuf":
            raise TypeError(
                f"save_checkpoint: parameter {k!r} has dtype {v.dtype}; expected numbers"
            )
        arrays[f"param/{k}"] = v
    header = {"format": FORMAT, "version": VERSION, "params": sorted(params), "meta": meta or {}}
    if opt is not None:
        st = opt.state_dict()
        header["opt_t"] = st["t"]
        for k, a in st["m"].items():
            arrays[f"opt_m/{k}"] = a
        for k, a in st["v"].items():
            arrays[f"opt_v/{k}"] = a
    try:
        _npz.write(path, arrays, header)
    except TypeError as e:
        raise TypeError(f"save_checkpoint: meta must be JSON-serializable: {e}") from None


def load_checkpoint(path, like=None):
    """Reads a checkpoint written by ``save_checkpoint``.

    Returns (params, opt_state, meta): params a dict name -> array; opt_state the optimizer's
    ``state_dict()`` (for ``load_state_dict``) or None; meta the dict that was saved. With
    ``like`` (a params dict of the model to restore), names, shapes and dtypes must match it.
    Raises ValueError for a truncated or corrupted file, one of another format or version, or
    one that does not match ``like``; FileNotFoundError if there is no file.
    """
    data, header = _npz.read(path, "load_checkpoint", "an lnnumba checkpoint")
    if header.get("format") != FORMAT:
        raise ValueError(f"load_checkpoint: {path} is not an lnnumba checkpoint")
    if header.get("version") != VERSION:
        raise ValueError(
            f"load_checkpoint: {path} has format version {header.get('version')}, this lnnumba "
            f"reads version {VERSION}"
        )
    params = {k[len("param/") :]: v for k, v in data.items() if k.startswith("param/")}
    if sorted(params) != header["params"]:
        raise ValueError(f"load_checkpoint: {path} is corrupted (parameters missing)")
    opt_state = None
    if "opt_t" in header:
        opt_state = {
            "t": header["opt_t"],
            "m": {k[len("opt_m/") :]: v for k, v in data.items() if k.startswith("opt_m/")},
            "v": {k[len("opt_v/") :]: v for k, v in data.items() if k.startswith("opt_v/")},
        }
    if like is not None:
        if set(like) != set(params):
            raise ValueError(
                f"load_checkpoint: {path} is from a different model: parameter names differ "
                f"({sorted(set(like) ^ set(params))})"
            )
        for k, v in params.items():
            if v.shape != like[k].shape or v.dtype != like[k].dtype:
                raise ValueError(
                    f"load_checkpoint: {path} is from a different model: {k!r} is "
                    f"{v.dtype}{v.shape}, expected {like[k].dtype}{like[k].shape}"
                )
    return params, opt_state, header["meta"]

"""Checkpoints: parameters, optimizer state and metadata in one ``.npz``, written atomically and
read without pickle (a checkpoint from a stranger cannot run code)."""

import io
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "lnnumba-checkpoint"
VERSION = 1


def save_checkpoint(path, params, opt=None, meta=None):
    """Writes ``params`` (dict name -> array), the optimizer's state (an object with
    ``state_dict()``, such as ``Adam``) and ``meta`` (a JSON-serializable dict: step, data
    position, RNG state...) to ``path``.

    The file is written to a temporary file beside ``path``, flushed to disk and renamed over it,
    so a crash mid-save leaves the previous checkpoint whole. Raises TypeError for arrays of
    object dtype or metadata that is not JSON.
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
        text = json.dumps(header)
    except TypeError as e:
        raise TypeError(f"save_checkpoint: meta must be JSON-serializable: {e}") from None
    arrays["__header__"] = np.frombuffer(text.encode(), np.uint8)
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load_checkpoint(path, like=None):
    """Reads a checkpoint written by ``save_checkpoint``.

    Returns (params, opt_state, meta): params a dict name -> array; opt_state the optimizer's
    ``state_dict()`` (for ``load_state_dict``) or None; meta the dict that was saved. With
    ``like`` (a params dict of the model to restore), names, shapes and dtypes must match it.
    Raises ValueError for a truncated or corrupted file, one of another format or version, or
    one that does not match ``like``; FileNotFoundError if there is no file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
        raise ValueError(f"load_checkpoint: {path} is truncated or corrupted ({e})") from None
    try:
        header = json.loads(bytes(data.pop("__header__")).decode())
    except (KeyError, ValueError, UnicodeDecodeError):
        raise ValueError(
            f"load_checkpoint: {path} is not an lnnumba checkpoint (no header)"
        ) from None
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

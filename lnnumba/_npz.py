"""Safe ``.npz`` files with a JSON header: written atomically, read without pickle. Shared by
checkpoints (``train.checkpoint``) and model files (``serve.models``)."""

import io
import json
import os
import tempfile
import zipfile

import numpy as np

from ._args import native

HEADER = "__header__"


def write(path, arrays, header):
    """Writes ``arrays`` (name -> array) and the JSON-serializable ``header`` to ``path``:
    to a temporary file beside it, flushed to disk, renamed over it, and the rename made
    durable, so a crash mid-write leaves any previous file whole. TypeError if the header is
    not JSON; FileNotFoundError if the directory does not exist."""
    try:
        text = json.dumps(header)
    except TypeError as e:
        raise TypeError(f"the header must be JSON-serializable: {e}") from None
    arrays = dict(arrays)
    arrays[HEADER] = np.frombuffer(text.encode(), np.uint8)
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=d)
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot write {path}: there is no directory {d}") from None
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
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read(path, fn, what):
    """(arrays, header) of a file written by ``write``; pickled content is refused. The arrays
    are in the machine's byte order (a file written on a machine of the other order is read).

    ValueError naming ``fn`` for a truncated, corrupted or header-less file (``what`` says what
    it should have been); FileNotFoundError if there is none."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            data = {k: native(z[k]) for k in z.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
        raise ValueError(f"{fn}: {path} is truncated or corrupted ({e})") from None
    try:
        header = json.loads(bytes(data.pop(HEADER)).decode())
    except (KeyError, ValueError, UnicodeDecodeError):
        raise ValueError(f"{fn}: {path} is not {what} (no header)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{fn}: {path} is not {what}")
    return data, header

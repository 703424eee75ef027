"""Model files: one ``.npz`` holding a model's parameters and its architecture as JSON, without
pickle (a model file from a stranger cannot run code), version-tagged, written atomically.

Supported models: ``LayerNorm``, ``RMSNorm``, ``Linear``, ``Embedding``, ``BatchNorm`` (with its
running statistics), ``RNN``, ``LSTM``, ``GRU`` and ``Stacked`` networks of them.
"""

from .. import _npz
from ..nn.cells import GRU, LSTM, RNN
from ..nn.layers import BatchNorm, Embedding, Linear
from ..nn.norm import LayerNorm, RMSNorm
from ..nn.stack import Stacked

FORMAT = "lnnumba-model"
VERSION = 1


def _architecture(model):
    """(kind, constructor arguments) of a supported model; TypeError for anything else."""
    dt = str(getattr(model, "dtype", ""))
    if isinstance(model, Stacked):
        return "Stacked", {
            "cell": model.cell,
            "input_size": model.input_size,
            "hidden_size": model.hidden_size,
            "num_layers": model.num_layers,
            "bidirectional": model.bidirectional,
            "layer_norm": model.layer_norm,
            "dtype": dt,
        }
    if isinstance(model, (LSTM, GRU, RNN)):
        kw = {
            "input_size": model.input_size,
            "hidden_size": model.hidden_size,
            "layer_norm": model.layer_norm,
            "dtype": dt,
            "eps": model.eps,
        }
        return type(model).__name__, kw
    if isinstance(model, LayerNorm):
        return "LayerNorm", {
            "normalized_shape": list(model.normalized_shape),
            "eps": model.eps,
            "elementwise_affine": "weight" in model.params,
            "bias": "bias" in model.params,
            "dtype": dt,
        }
    if isinstance(model, RMSNorm):
        return "RMSNorm", {
            "normalized_shape": list(model.normalized_shape),
            "eps": model.eps,
            "elementwise_affine": "weight" in model.params,
            "dtype": dt,
        }
    if isinstance(model, Linear):
        return "Linear", {
            "in_features": model.in_features,
            "out_features": model.out_features,
            "dtype": dt,
        }
    if isinstance(model, Embedding):
        return "Embedding", {"num_embeddings": model.num_embeddings, "dim": model.dim, "dtype": dt}
    if isinstance(model, BatchNorm):
        return "BatchNorm", {
            "num_features": model.num_features,
            "eps": model.eps,
            "momentum": model.momentum,
            "dtype": dt,
        }
    raise TypeError(
        f"save_model: cannot save a {type(model).__name__}; supported: LayerNorm, "
        "RMSNorm, Linear, Embedding, BatchNorm, RNN, LSTM, GRU, Stacked"
    )


_BUILD = {
    "Stacked": Stacked,
    "LSTM": LSTM,
    "GRU": GRU,
    "RNN": RNN,
    "LayerNorm": LayerNorm,
    "RMSNorm": RMSNorm,
    "Linear": Linear,
    "Embedding": Embedding,
    "BatchNorm": BatchNorm,
}


def save_model(path, model):
    """Writes ``model`` to ``path`` (one .npz: parameters, and for BatchNorm its running
    statistics, plus a JSON header with the architecture and format version). Atomic: written
    to a temporary file, fsynced, renamed. Raises TypeError for unsupported models,
    FileNotFoundError if path's directory does not exist."""
    kind, kw = _architecture(model)
    arrays = {f"param/{k}": v for k, v in model.params.items()}
    for k, v in getattr(model, "buffers", {}).items():
        arrays[f"buffer/{k}"] = v
    header = {"format": FORMAT, "version": VERSION, "kind": kind, "args": kw}
    _npz.write(path, arrays, header)


def load_model(path):
    """Reads a model written by ``save_model`` and returns it, ready to use.

    Raises ValueError for a truncated or corrupted file, another format, a newer or unknown
    format version, or arrays that do not match the architecture; FileNotFoundError if absent.
    """
    data, header = _npz.read(path, "load_model", "an lnnumba model file")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"load_model: {path} is not an lnnumba model file")
    if header.get("version") != VERSION:
        raise ValueError(
            f"load_model: {path} has format version {header.get('version')}; this "
            f"lnnumba reads version {VERSION} (upgrade lnnumba to read newer files)"
        )
    kind = header.get("kind")
    if kind not in _BUILD:
        raise ValueError(f"load_model: {path} holds an unknown model kind {kind!r}")
    kw = dict(header["args"])
    if "normalized_shape" in kw:
        kw["normalized_shape"] = tuple(kw["normalized_shape"])
    first = {
        "Stacked": ("cell", "input_size", "hidden_size"),
        "LSTM": ("input_size", "hidden_size"),
        "GRU": ("input_size", "hidden_size"),
        "RNN": ("input_size", "hidden_size"),
        "LayerNorm": ("normalized_shape",),
        "RMSNorm": ("normalized_shape",),
        "Linear": ("in_features", "out_features"),
        "Embedding": ("num_embeddings", "dim"),
        "BatchNorm": ("num_features",),
    }[kind]
    model = _BUILD[kind](*[kw.pop(k) for k in first], **kw)
    for group, target in (("param", model.params), ("buffer", getattr(model, "buffers", {}))):
        saved = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith(group + "/")}
        if set(saved) != set(target):
            raise ValueError(
                f"load_model: {path}: the arrays {sorted(set(saved) ^ set(target))} "
                f"do not match a {kind} with these arguments"
            )
        for k, v in saved.items():
            if v.shape != target[k].shape or v.dtype != target[k].dtype:
                raise ValueError(
                    f"load_model: {path}: {group} {k!r} is {v.dtype}{v.shape}, "
                    f"expected {target[k].dtype}{target[k].shape}"
                )
            target[k][...] = v
    return model

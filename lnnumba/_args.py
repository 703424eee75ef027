"""Argument checking and normalization shared by every public function.

Each helper takes the public function's name (``fn``) for its messages, checks one thing, and
returns it in the form the kernels want: C-contiguous arrays of the compute dtype, viewed as
``(M, N)`` rows (or ``(N,)`` parameters, ``(M,)`` statistics). The checks are written for a
short path on the common case (a C-contiguous float32/float64 ndarray), because at batch 1 the
Python-side cost of a call is most of its cost.

Dtype rules
-----------
======================  =============  ===========  ===================
x dtype                 computed in    result       mean/rstd saved as
======================  =============  ===========  ===================
float32                 float32        float32      float32
float64                 float64        float64      float64
float16                 float32        float16      float32
integer, bool           float64        float64      float64  (as np.mean)
======================  =============  ===========  ===================

``weight``, ``bias``, ``out`` and ``dy`` must have the result dtype; ``mean``/``rstd`` the
saved dtype. Anything else (complex, object, strings, datetimes, long double) is a TypeError.
Byte order does not matter: arrays of the other byte order (data read from a big-endian file,
say) are converted to the machine's, as NumPy's own functions do, and results are in the
machine's order (an ``out`` of the other order is written as such). A masked array with masked
elements is a TypeError: no function here has a notion of masks, and dropping the mask would
silently use the values under it.
"""

import math
import operator
import sys

import numpy as np

_F16 = np.dtype(np.float16)
_INF = math.inf
_NDARRAY = np.ndarray  # (module globals: the fast path's checks run at every call)
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)

ALL_FLOATS = (_F16, _F32, _F64)

# input dtype -> (compute/saved dtype, result dtype)
_DTYPES = {_F32: (_F32, _F32), _F64: (_F64, _F64), _F16: (_F32, _F16)}


def dtypes(fn, name, dt):
    """(compute dtype, result dtype) for an input of dtype ``dt``; TypeError if unsupported."""
    try:
        return _DTYPES[dt]
    except KeyError:
        pass
    if not dt.isnative:  # the other byte order: as the machine's
        nat = dt.newbyteorder("=")
        if nat in _DTYPES:
            return _DTYPES[nat]
    if dt.kind in "iub":
        return _F64, _F64
    raise TypeError(
        f"{fn}: {name} has dtype {dt}, which is not supported; expected a float16, float32 or "
        "float64 array (integer and bool arrays are converted to float64)"
    )


def is_device(a):
    """Whether ``a`` lives on a GPU: a Numba device array (the CUDA simulator's arrays have only
    ``copy_to_host``) or any object exporting ``__cuda_array_interface__``."""
    # copy_to_host first: a method lookup, where Numba builds __cuda_array_interface__ anew
    return hasattr(a, "copy_to_host") or hasattr(a, "__cuda_array_interface__")


def as_array(fn, name, a):
    """``a`` as an ndarray in the machine's byte order (array-likes such as lists are converted;
    arrays of the other byte order copied); TypeError for what is not an array of numbers, and
    for a masked array with masked elements."""
    if type(a) is np.ndarray:
        return native(a)
    if isinstance(a, np.ndarray):
        if isinstance(a, np.ma.MaskedArray) and np.ma.is_masked(a):
            raise TypeError(
                f"{fn}: {name} is a masked array with masked elements, and masks are not "
                "supported; pass a plain array, such as a.filled(value)"
            )
        return native(np.asarray(a))  # subclasses (np.matrix, masked arrays) become plain arrays
    if is_device(a):
        raise TypeError(
            f"{fn}: {name} is a GPU array ({type(a).__name__}) but x is a host array; pass "
            "device arrays for every array argument, or NumPy arrays for all of them"
        )
    try:
        out = np.asarray(a)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{fn}: {name} could not be converted to a NumPy array: {e}") from None
    if out.dtype.kind not in "fiub":
        raise TypeError(
            f"{fn}: {name} must be a NumPy array of floats (or integers/bools), got "
            f"{type(a).__name__} converting to dtype {out.dtype}"
        )
    return native(out)


def native(a):
    """``a`` itself, or a copy in the machine's byte order where its dtype has the other one."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def norm_axis(fn, axis, ndim):
    """``axis`` as a non-negative int in [0, ndim); ValueError/TypeError otherwise."""
    if type(axis) is not int:
        if isinstance(axis, bool):
            raise TypeError(f"{fn}: axis must be an int, got bool")
        try:
            axis = operator.index(axis)
        except TypeError:
            raise TypeError(f"{fn}: axis must be an int, got {type(axis).__name__}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{fn}: axis {axis} is out of range for an input with {ndim} dimensions; expected "
            f"{-ndim} <= axis < {ndim}"
        )
    return axis + ndim if axis < 0 else axis


def check_eps(fn, eps):
    """``eps`` as a float, finite and >= 0."""
    if type(eps) is float and 0.0 <= eps < math.inf:
        return eps
    if type(eps) is not float:
        if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.number)):
            raise TypeError(f"{fn}: eps must be a real number, got {type(eps).__name__}")
        if isinstance(eps, np.complexfloating):
            raise TypeError(f"{fn}: eps must be a real number, got {type(eps).__name__}")
        eps = float(eps)
    if not 0.0 <= eps < math.inf:
        raise ValueError(f"{fn}: eps must be finite and >= 0, got {eps}")
    return eps


def rows(fn, x, axis):
    """Checks the main input and views it as rows.

    x: (*B, *S) with S = x.shape[axis:]. Returns (x2, shape, axis, cdt, rdt): x2 (M, N) C-contiguous
    of the compute dtype cdt (a view of x when possible, else a copy; x is never written),
    shape = x.shape, axis as a non-negative int, rdt the result dtype.
    """
    if type(x) is not np.ndarray:
        x = as_array(fn, "x", x)
    dt = x.dtype
    cdt, rdt = _DTYPES[dt] if dt in _DTYPES else dtypes(fn, "x", dt)
    shape = x.shape
    nd = len(shape)
    if type(axis) is int and axis == -1 and nd:
        axis = nd - 1
        N = shape[axis]
    else:
        if nd == 0:
            raise ValueError(
                f"{fn}: x is 0-d (a scalar); expected an array with at least 1 dimension"
            )
        axis = norm_axis(fn, axis, nd)
        N = math.prod(shape[axis:])
    if N == 0:
        raise ValueError(
            f"{fn}: the normalized dimensions x.shape[{axis}:] = {shape[axis:]} contain a zero; "
            "expected every normalized dimension to have length >= 1"
        )
    if dt is not cdt:
        x = x.astype(cdt)
    elif not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    if nd != 2 or axis != 1:
        x = x.reshape(-1, N)
    return x, shape, axis, cdt, rdt


def param(fn, name, p, shape, axis, cdt, rdt):
    """Checks a per-element parameter (weight or bias) of shape ``shape[axis:]``.

    Returns None or an (N,) C-contiguous array of the compute dtype (the caller's array itself
    when it already is one; never modified).
    """
    if p is None:
        return None
    if (
        type(p) is np.ndarray
        and p.dtype is cdt
        and p.ndim == 1
        and len(shape) - axis == 1
        and p.shape[0] == shape[axis]
        and p.flags.c_contiguous
    ):
        return p  # the common case, checked in full
    p = as_array(fn, name, p)
    if p.shape != shape[axis:]:
        raise ValueError(
            f"{fn}: {name} has shape {p.shape}, expected {shape[axis:]} (x.shape[axis:] for x of "
            f"shape {shape} and axis={axis})"
        )
    if p.dtype != rdt:
        raise TypeError(f"{fn}: {name} has dtype {p.dtype}, expected {rdt} to match x")
    if rdt is not cdt:
        p = p.astype(cdt)
    elif not p.flags.c_contiguous:
        p = np.ascontiguousarray(p)
    return p.reshape(-1)


def in_kernel_form(x, weight, bias, axis, eps=0.0, max_bytes=sys.maxsize):
    """Whether x, weight, bias (and eps) are already in the kernels' form: x a 2-d C-contiguous
    float32/float64 ndarray of at most ``max_bytes`` with a nonzero row length N, normalized
    over its last axis (axis -1); weight and bias None or C-contiguous (N,) ndarrays of x's
    dtype; eps a finite float >= 0. The fewest checks that prove them valid: the common case,
    checked first, since at batch one the full checks are most of a call's cost (``prepare``,
    and the public functions' short paths in ``lnnumba.norm``)."""
    if not (
        type(x) is _NDARRAY
        and x.ndim == 2
        and type(axis) is int
        and axis == -1
        and x.nbytes <= max_bytes
    ):
        return False
    dt = x.dtype
    N = x.shape[1]
    return bool(
        (dt is _F32 or dt is _F64)  # (dtype objects are NumPy's singletons)
        and N
        and (
            weight is None
            or (
                type(weight) is _NDARRAY
                and weight.dtype is dt
                and weight.ndim == 1
                and weight.size == N
                and weight.flags.c_contiguous
            )
        )
        and (
            bias is None
            or (
                type(bias) is _NDARRAY
                and bias.dtype is dt
                and bias.ndim == 1
                and bias.size == N
                and bias.flags.c_contiguous
            )
        )
        and type(eps) is float
        and 0.0 <= eps < _INF
        and x.flags.c_contiguous
    )


def prepare(fn, x, weight, bias, axis):
    """``rows`` and ``param`` for x, weight and bias at once, with a short path for the common
    case (C-contiguous float32/float64, 2-d x, axis=-1, matching 1-d parameters), where the
    same checks take a fraction of the time.

    Returns (x2, w, b, shape, axis, cdt, rdt) as ``rows`` and ``param`` do.
    """
    if in_kernel_form(x, weight, bias, axis):
        return x, weight, bias, x.shape, 1, x.dtype, x.dtype
    x2, shape, axis, cdt, rdt = rows(fn, x, axis)
    w = param(fn, "weight", weight, shape, axis, cdt, rdt)
    b = param(fn, "bias", bias, shape, axis, cdt, rdt)
    return x2, w, b, shape, axis, cdt, rdt


def like_x(fn, name, a, shape, N, cdt, rdt):
    """Checks an array that must have x's shape and result dtype (``dy``).

    Returns it as (M, N) C-contiguous rows of the compute dtype, like ``rows``.
    """
    a = as_array(fn, name, a)
    if a.shape != shape:
        raise ValueError(f"{fn}: {name} has shape {a.shape}, expected {shape} (the shape of x)")
    if a.dtype != rdt:
        raise TypeError(f"{fn}: {name} has dtype {a.dtype}, expected {rdt} to match x")
    if rdt is not cdt:
        a = a.astype(cdt)
    elif not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a.reshape(-1, N)


def stats_shape(shape, axis):
    """Shape of the saved mean/rstd: x.shape[:axis] + (1,) * (x.ndim - axis), as in ONNX."""
    return shape[:axis] + (1,) * (len(shape) - axis)


def stat(fn, name, a, shape, axis, cdt):
    """Checks a saved statistic (mean or rstd) from the forward pass; returns it as (M,)."""
    a = as_array(fn, name, a)
    want = stats_shape(shape, axis)
    if a.shape != want:
        raise ValueError(
            f"{fn}: {name} has shape {a.shape}, expected {want} (x.shape[:axis] + (1,) * k, as "
            "returned by the forward pass)"
        )
    if a.dtype != cdt:
        raise TypeError(
            f"{fn}: {name} has dtype {a.dtype}, expected {cdt} (as returned by the forward pass)"
        )
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a.reshape(-1)


def out_rows(fn, out, x, shape, N, cdt, rdt):
    """Checks ``out`` (x's shape, result dtype, writeable).

    Returns (y2, direct): y2 the (M, N) rows the kernel writes; ``direct`` is False when y2 is a
    temporary whose values the caller must copy into ``out`` (``out`` not C-contiguous, of
    another dtype than the compute dtype or the other byte order, or overlapping x other than
    exactly).
    """
    if type(out) is not np.ndarray:
        raise TypeError(f"{fn}: out must be a numpy.ndarray or None, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{fn}: out has shape {out.shape}, expected {shape} (the shape of x)")
    if out.dtype.newbyteorder("=") != rdt:  # (either byte order: the copy below converts)
        raise TypeError(f"{fn}: out has dtype {out.dtype}, expected {rdt} (the result dtype)")
    if not out.flags.writeable:
        raise ValueError(f"{fn}: out is read-only; expected a writeable array")
    if (
        rdt is cdt
        and out.dtype.isnative
        and out.flags.c_contiguous
        and (out is x or not np.may_share_memory(out, x))
    ):
        return out.reshape(-1, N), True
    return np.empty((out.size // N, N), cdt), False


def positive_int(fn, name, v):
    """``v`` as an int >= 1 (sizes given to constructors); TypeError/ValueError otherwise."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{fn}: {name} must be >= 1, got {v}")
    return int(v)


def rng(fn, seed):
    """A NumPy Generator from ``seed`` (None, an int >= 0, a sequence of them, a SeedSequence
    or a Generator, as ``np.random.default_rng`` takes); TypeError/ValueError otherwise."""
    try:
        return np.random.default_rng(seed)
    except TypeError:
        raise TypeError(
            f"{fn}: seed must be None, an int >= 0 or a sequence of them, got {type(seed).__name__}"
        ) from None
    except ValueError as e:
        raise ValueError(f"{fn}: seed must be None or ints >= 0, got {seed!r} ({e})") from None


def float_dtype(fn, dtype, allowed=(_F32, _F64)):
    """``dtype`` as a NumPy dtype among ``allowed`` (a module's parameter dtype)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{fn}: dtype must be a NumPy dtype, got {dtype!r}") from None
    if dt not in allowed:
        names = " or ".join(str(a) for a in allowed)
        raise TypeError(f"{fn}: dtype must be {names}, got {dt}")
    return dt

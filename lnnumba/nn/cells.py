"""Layer-normalized (and plain) RNN, LSTM and GRU cells with hand-written backpropagation
through time. Parameterization, gate order and initialization: PAPER.md §3.

Matrix products go to BLAS (NumPy's ``@``): the input projection of all T steps as one GEMM, the
recurrence as one GEMM per step; everything between them is one fused ``@njit`` pass per step
(``lnnumba.cpu.cells``), which uses the same layer-norm row routine as ``layer_norm``. A small
batch with a small recurrent matrix (``KERNEL_LOOP_MAX_BYTES``, ``KERNEL_LOOP_MAX_WORK_BYTES``:
the inference path of a small model, a server's batch of requests) runs the loop over time in
one kernel call instead, recurrent product included: per step that saves a BLAS call and a
kernel launch, which cost more than the step's own arithmetic.
``step`` at batch one (the serving path) runs in one kernel call too, with its two products split
over the cores (``matvec_pair``; see ``STEP_SPLIT_MIN_BYTES``).

Shapes: x (T, B, I) time-major; hs (T, B, H); states are tuples, ``(h, c)`` for the LSTM and
``(h,)`` for the GRU and RNN, each (B, H); ``None`` means zeros.
"""

import threading
from operator import itemgetter
from typing import NamedTuple

import numba
import numpy as np

from .. import _args, _memory
from ..cpu import cells as _k
from ..cpu.norm import blas_recent, note_blas, parallel_lock, slow_parallel_launch

# Largest recurrent matrix Wh (bytes) for which a small batch runs its loop over time inside one
# kernel call, with the kernel's own product (``cpu.cells.matmat``): at batch one, up to about a
# core's L2 cache it is as fast as BLAS; past it BLAS is faster (LSTM H=256 float32: Wh is 1 MB).
KERNEL_LOOP_MAX_BYTES = 1 << 20
# ... and the most work per step (batch rows times Wh's bytes) for which it does: per step, the
# BLAS loop pays a NumPy product (25 us for 7x128 @ 128x512 float32, one thread or two) and a
# kernel call; the kernel loop's product costs in proportion to the batch. Forward, T=100,
# float32, LN, the kernel loop against the BLAS loop side by side on 2 cores: LSTM H=128 (I=32)
# B=8 (2 MB) 1.13x, B=12 (3 MB) 1.01x, B=16 (4 MB) 0.84x; LSTM H=256 (I=128) B=4 (4 MB) 1.52x;
# GRU H=128 B=8 1.92x, B=16 (3 MB) 1.21x; RNN H=128 B=4 2.95x, B=16 1.53x, B=32 (2 MB) 1.12x.
KERNEL_LOOP_MAX_WORK_BYTES = 3 << 20

# Bytes of the input products (x_t Wx for a run of steps, B x G*H each) that ``predict``
# computes at a time, with scratch of the same order for the steps' other values: small enough
# to stay in the caches between the product and the steps, and large enough (at least one step)
# that the product stays one efficient GEMM.
PREDICT_CHUNK_BYTES = 1 << 20

# Per-thread scratch of the batch-of-one ``step`` (``_Cell._one_scratch``).
_one_scratch = threading.local()

# Weights (Wx and Wh together, bytes) from which a batch-of-one ``step`` splits its two
# matrix-vector products over the cores (``matvec_pair``) instead of calling BLAS. Measured side
# by side on 2 cores, float32 unless said: 2.5-4x faster than BLAS at LSTM I=H=256 (2 MB; each
# core streams its share from its own caches: L2 where the share fits, else L3), 1.4x at
# I=H=128; 1.15-1.3x from memory, with two tasks per thread (``STEP_TWO_TASKS_MIN_SHARE``):
# I=H=512 (8 MB) 1.15x, I=H=1024 (32 MB) 1.2-1.3x, I=H=1536 (72 MB) 1.2x, float64 I=H=1024
# (64 MB) 1.3x; no faster at I=H=64 (128 KB), where the parallel launch costs as much as it
# saves.
STEP_SPLIT_MIN_BYTES = 256 << 10
# The split gives each task at least this many bytes of weights (at most one task per thread):
# below it a task's share costs less than starting it.
STEP_TASK_MIN_BYTES = 128 << 10
# From this share of the weights per thread (bytes), past the cores' L2 caches, each thread's
# share is split in two tasks, run one after the other: measured 1.07-1.4x faster than one task
# a thread from 4.5 MB of weights on 2 threads (I=H=384 float32) up, and slower below 4 MB
# (I=H=256: 13.2 against 15.2 us).
STEP_TWO_TASKS_MIN_SHARE = 2 << 20
# Tasks are counted from Numba's thread pool size, not from ``numba.get_num_threads()`` (0.5 us a
# call, a fifth of the rest of the step's Python side); after ``numba.set_num_threads(n)`` the
# tasks still all run, n at a time.
_MAX_THREADS = numba.config.NUMBA_NUM_THREADS


def prefix_rows(active):
    """(T,) the number of rows active at each step, where the active rows of every step are
    the first ones (the sequences sorted longest first, as PyTorch's packed sequences are);
    None otherwise. active: (T, B) bool. The per-step BLAS products then take those rows
    only."""
    n = active.sum(axis=1)
    if (active == (np.arange(active.shape[1]) < n[:, None])).all():
        return n
    return None


def check_lengths(fn, lengths, T, B):
    """``lengths`` as an array, checked: (B,) integers in [0, T]; TypeError/ValueError naming
    ``fn`` otherwise."""
    lengths = _args.as_array(fn, "lengths", lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"{fn}: lengths must be integers, got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"{fn}: lengths has shape {lengths.shape}, expected {(B,)}")
    if B and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(
            f"{fn}: lengths must lie in [0, T={T}], got {lengths.min()}..{lengths.max()}"
        )
    return lengths


class CellCache(NamedTuple):
    """What ``backward`` needs from ``forward``. T steps, B rows, H hidden, G gate blocks."""

    owner: object
    x: np.ndarray  # (T, B, I) the input
    active: np.ndarray  # (T, B) bool: step t of row b is inside its sequence
    all_active: bool  # no lengths were given: every step of every row is active
    h: np.ndarray  # (T + 1, B, H) states h_0 .. h_T
    c: np.ndarray  # (T + 1, B, H) LSTM cell states (unnormalized), else (0,)
    xw: np.ndarray  # (T, B, G*H) x_t Wx (RNN: x_t Wx + h_{t-1} Wh)
    hw: np.ndarray  # (T, B, G*H) h_{t-1} Wh
    acts: np.ndarray  # (T, B, k*H) gate activations
    st: np.ndarray  # (T, B, s) LN statistics (mean, rstd) per normalized row
    cn: np.ndarray  # (T, B, H) LSTM tanh of the (normalized) cell state, else (0,)


class _Cell:
    """Shared machinery of the three cells; subclasses define the parameters and the step."""

    _name = ""
    G = 1  # gate blocks in Wx / Wh
    n_state = 1
    _step_param_names = ()
    _param_getter = None  # ``_step_params``' fast path (``_make_param_getter``)
    _plan = None  # ``_step_tasks``' last weights, settings and tasks

    def __init__(
        self, input_size, hidden_size, *, layer_norm=True, dtype=np.float32, seed=None, eps=1e-5
    ):
        cls = self._name
        self.input_size = _args.positive_int(cls, "input_size", input_size)
        self.hidden_size = _args.positive_int(cls, "hidden_size", hidden_size)
        if not isinstance(layer_norm, (bool, np.bool_)):
            raise TypeError(f"{cls}: layer_norm must be a bool, got {type(layer_norm).__name__}")
        self.layer_norm = bool(layer_norm)
        self.dtype = dt = _args.float_dtype(cls, dtype)
        self.eps = _args.check_eps(cls, eps)
        rng = _args.rng(cls, seed)
        I, H, GH = self.input_size, self.hidden_size, self.G * self.hidden_size
        k = 1.0 / np.sqrt(H)
        self.params = {
            "Wx": rng.uniform(-k, k, (I, GH)).astype(dt),
            "Wh": rng.uniform(-k, k, (H, GH)).astype(dt),
        }
        self._init_params(rng)
        # on cache-line boundaries: the kernels' vector loads of a row of Wh then never span two
        # lines (see ``_memory.aligned``); loading a model or a checkpoint, importing PyTorch
        # weights and the optimizers write into these arrays, so they stay aligned
        self.params = {k: _memory.aligned(v) for k, v in self.params.items()}
        self._empty = np.zeros(0, dt)
        self._param_names = tuple(self.params)
        self._param_getter = self._make_param_getter()

    # -- helpers ------------------------------------------------------------------------------

    def _p(self, name):
        """The current value of a parameter (optimizers update ``params`` in place); an empty
        array for an LN parameter of a cell without LN."""
        a = self.params.get(name)
        if a is None:
            if self.layer_norm or not name.startswith("ln_"):
                raise self._missing(name)
            return self._empty
        return a

    def _zeros(self, shape):
        return np.zeros(shape, self.dtype)

    def _work(self, shape):
        """An uninitialized buffer of the cell's dtype for ``forward`` / ``backward`` (the
        saved products, activations and states, the products' gradients): from the pool of
        reused memory (``lnnumba._memory``) from ``_memory.POOL_MIN_BYTES`` up, rather than
        fresh pages, which the operating system zeroes on first touch."""
        return _memory.empty(shape, self.dtype)

    def _check_params(self):
        """Raises ValueError if ``params`` lacks one of the cell's parameters."""
        for name in self._param_names:
            if name not in self.params:
                raise self._missing(name)

    def _missing(self, name):
        return ValueError(f"{self._name}: params has no {name!r}, a parameter of this cell")

    def _step_params(self):
        """The parameters the step kernels (``_step``, ``_steps``) take, in their order; those
        of LN for a cell without LN as empty arrays."""
        get = self._param_getter
        if get is None:
            return [self._p(n) for n in self._step_param_names]
        try:
            return get(self.params)
        except KeyError as err:
            raise self._missing(err.args[0]) from None

    def _make_param_getter(self):
        """``_step_params``' fast path: an ``itemgetter`` of the step's parameters, with empty
        arrays before or after them for the LN parameters that a cell without LN lacks; None
        where the parameters present are not one run of ``_step_param_names``."""
        names = self._step_param_names
        at = [i for i, n in enumerate(names) if n in self.params]
        if not at or at != list(range(at[0], at[-1] + 1)):
            return None
        e = self._empty
        head, tail = (e,) * at[0], (e,) * (len(names) - 1 - at[-1])
        get = itemgetter(*names[at[0] : at[-1] + 1])
        if len(at) == 1:
            return lambda p: (*head, get(p), *tail)
        if head or tail:
            return lambda p: (*head, *get(p), *tail)
        return get

    @staticmethod
    def _split_products(Wx, Wh):
        """Whether a batch-of-one ``step`` splits its two matrix-vector products over the cores
        (``matvec_pair``) rather than calling BLAS: from ``STEP_SPLIT_MIN_BYTES`` of weights."""
        return Wx.nbytes + Wh.nbytes >= STEP_SPLIT_MIN_BYTES

    @staticmethod
    def _split_tasks(Wx, Wh):
        """Tasks of a batch-of-one ``step``'s split products (``matvec_pair``) on weights Wx
        (I, G*H) and Wh (H, G*H); 0 where the step calls BLAS instead. One task per thread,
        each with ``STEP_TASK_MIN_BYTES`` or more, two per thread from
        ``STEP_TWO_TASKS_MIN_SHARE`` per thread; 1 to I + H."""
        if not _Cell._split_products(Wx, Wh):
            return 0
        size = Wx.nbytes + Wh.nbytes
        nt = max(1, min(size // STEP_TASK_MIN_BYTES, _MAX_THREADS))
        if size // nt >= STEP_TWO_TASKS_MIN_SHARE:
            nt *= 2
        return min(nt, Wx.shape[0] + Wh.shape[0])

    def _step_tasks(self, Wx, Wh):
        """``_split_tasks(Wx, Wh)``, kept for the weights and settings last seen: a ``step``
        that recomputed it would spend a sixth of its Python side on it."""
        settings = (
            STEP_SPLIT_MIN_BYTES, STEP_TASK_MIN_BYTES, STEP_TWO_TASKS_MIN_SHARE, _MAX_THREADS
        )  # fmt: skip
        plan = self._plan  # (Wx, Wh, settings, tasks)
        if plan is not None and plan[0] is Wx and plan[1] is Wh and plan[2] == settings:
            return plan[3]
        nt = self._split_tasks(Wx, Wh)
        self._plan = (Wx, Wh, settings, nt)
        return nt

    def _one_scratch(self):
        """Scratch of a batch-of-one ``step``, kept per thread and per shape: (xw, hw) (1, G*H),
        acts, stats, cn, tmp as ``_buffers`` gives them for one step of one row, and active (1,)
        True."""
        key = (self._name, self.dtype, self.input_size, self.hidden_size)
        cache = getattr(_one_scratch, "bufs", None)
        if cache is None:
            cache = _one_scratch.bufs = {}
        bufs = cache.get(key)
        if bufs is None:
            GH, dt = self.G * self.hidden_size, self.dtype
            acts, stats, cn, tmp = self._buffers(1, 1)
            e = self._empty
            bufs = (
                np.empty((1, GH), dt),
                np.empty((1, GH), dt),
                acts[0] if acts.ndim == 3 else e,
                stats[0],
                cn[0] if cn.ndim == 3 else e,
                tmp,
                np.ones(1, bool),
            )
            # on cache-line boundaries, as the weights (a step measured 2-4% faster)
            bufs = cache[key] = tuple(_memory.aligned(b) for b in bufs)
        return bufs

    @staticmethod
    def _kernel_loop(B, Wh):
        """Whether the loop over time runs inside one kernel call (``_steps``) rather than as a
        BLAS product and a kernel call per step: for a small batch and a small Wh
        (``KERNEL_LOOP_MAX_BYTES``, ``KERNEL_LOOP_MAX_WORK_BYTES``)."""
        n = Wh.nbytes
        return n <= KERNEL_LOOP_MAX_BYTES and B * n <= KERNEL_LOOP_MAX_WORK_BYTES

    def _check_x(self, x, ndim, what):
        if (  # the common case, checked fast
            type(x) is np.ndarray
            and x.ndim == ndim
            and x.shape[-1] == self.input_size
            and x.dtype == self.dtype
            and x.flags.c_contiguous
        ):
            return x
        fn = f"{self._name}.{what}"
        x = _args.as_array(fn, "x", x)
        if x.ndim != ndim:
            shape = "(T, B, I)" if ndim == 3 else "(B, I)"
            raise ValueError(f"{fn}: x has {x.ndim} dimensions, expected {ndim}: {shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{fn}: x has {x.shape[-1]} input features (last dimension), expected "
                f"input_size={self.input_size}"
            )
        if x.dtype != self.dtype:
            raise TypeError(
                f"{fn}: x has dtype {x.dtype}, expected {self.dtype} (the cell's dtype)"
            )
        return np.ascontiguousarray(x)

    def _check_state(self, state, B, what, name="state"):
        H = self.hidden_size
        if type(state) is tuple and len(state) == self.n_state:  # the common case, checked fast
            shape, dt = (B, H), self.dtype
            for s in state:
                if not (
                    type(s) is np.ndarray
                    and s.shape == shape
                    and s.dtype == dt
                    and s.flags.c_contiguous
                ):
                    break
            else:
                return state
        if state is None:
            return [self._zeros((B, H)) for _ in range(self.n_state)]
        fn = f"{self._name}.{what}"
        if not isinstance(state, (tuple, list)):
            raise TypeError(
                f"{fn}: {name} must be a tuple of {self.n_state} arrays "
                f"({self._state_names}) or None, got {type(state).__name__}"
            )
        if len(state) != self.n_state:
            raise ValueError(
                f"{fn}: {name} has {len(state)} arrays, expected {self.n_state} "
                f"({self._state_names})"
            )
        out = []
        for i, s in enumerate(state):
            s = _args.as_array(fn, f"{name}[{i}]", s)
            if s.shape != (B, H):
                raise ValueError(f"{fn}: {name}[{i}] has shape {s.shape}, expected {(B, H)}")
            if s.dtype != self.dtype:
                raise TypeError(f"{fn}: {name}[{i}] has dtype {s.dtype}, expected {self.dtype}")
            out.append(np.ascontiguousarray(s))  # only read: the caller's arrays are never written
        return out

    def _check_lengths(self, lengths, T, B, what="forward"):
        """(T, B) bool: whether step t of sequence b is within its length."""
        if lengths is None:
            return np.ones((T, B), bool)
        lengths = check_lengths(f"{self._name}.{what}", lengths, T, B)
        return np.arange(T)[:, None] < lengths[None, :]

    # -- public API ---------------------------------------------------------------------------

    def forward(self, x, state=None, lengths=None):
        """Runs the cell over a sequence.

        x: (T, B, I) of the cell's dtype; state: initial state tuple or None (zeros);
        lengths: (B,) ints in [0, T] or None (all T). For t >= lengths[b], sequence b's state
        stays as it was and its output row is zero.

        Returns (hs, last, cache): hs (T, B, H); last, the state tuple after each sequence's own
        last step; cache for ``backward``. Raises TypeError/ValueError for bad input.
        """
        x = self._check_x(x, 3, "forward")
        self._check_params()
        T, B, I = x.shape
        H, GH = self.hidden_size, self.G * self.hidden_size
        st0 = self._check_state(state, B, "forward")
        active = self._check_lengths(lengths, T, B)
        Wx, Wh = self._p("Wx"), self._p("Wh")
        xw = self._work((T, B, GH))
        np.matmul(x.reshape(T * B, I), Wx, out=xw.reshape(T * B, GH))  # one GEMM for all steps
        note_blas(T * B, GH, I)
        # the steps write h[1:] and c[1:] whole, inactive rows included (hw: the active rows,
        # the only ones read)
        h = self._work((T + 1, B, H))
        h[0] = st0[0]
        c = self._work((T + 1, B, H)) if self.n_state == 2 else self._empty
        if self.n_state == 2:
            c[0] = st0[1]
        hw = self._work((T, B, GH))
        acts, stats, cn, tmp = self._buffers(T, B)
        rows = None if lengths is None else prefix_rows(active)
        self._run_steps(h, c, acts, stats, cn, xw, hw, Wh, active, tmp, rows)
        hs = h[1:].copy()
        if lengths is not None:
            hs[~active] = 0
        last = (h[T].copy(), c[T].copy()) if self.n_state == 2 else (h[T].copy(),)
        return hs, last, CellCache(self, x, active, lengths is None, h, c, xw, hw, acts, stats, cn)

    def _run_steps(self, h, c, acts, stats, cn, xw, hw, Wh, active, tmp, rows):
        """Steps t = 0..n-1, in the kernel loop (``_kernel_loop``) or as a BLAS product and a
        kernel call per step. h, c: (n + 1, B, H), h[0], c[0] the state before (c: LSTM, else
        empty); xw: (n, B, G*H) the input products; hw: (n, B, G*H) out, the rows of active
        sequences (the others are not read); acts, stats, cn: (n, B, ...) out, as ``_buffers``
        gives them (empty where the cell has none); active: (n, B); tmp: the step kernels'
        scratch; rows: ``prefix_rows(active)`` or None (every row's product is computed)."""
        n, B = xw.shape[:2]
        lstm = self.n_state == 2
        e = self._empty
        if self._kernel_loop(B, Wh):
            self._steps(h, c, acts, stats, cn, xw, hw, Wh, active, tmp)
            return
        for t in range(n):
            k = B if rows is None else rows[t]
            np.matmul(h[t][:k], Wh, out=hw[t][:k])
            self._step(
                h[t + 1],
                c[t + 1] if lstm else e,
                acts[t] if acts.ndim == 3 else e,
                stats[t],
                cn[t] if lstm else e,
                xw[t],
                hw[t],
                h[t],
                c[t] if lstm else e,
                active[t],
                tmp,
            )
        note_blas(B, Wh.shape[1], Wh.shape[0])

    def predict(self, x, state=None, lengths=None):
        """``forward`` without a cache, the inference path over whole sequences.

        x, state, lengths as in ``forward``. Returns (hs, last): hs (T, B, H), last the state
        tuple after each sequence's own last step, as ``forward`` returns them (within float
        rounding: the input products are computed ``PREDICT_CHUNK_BYTES`` at a time, and BLAS
        may round a smaller product differently). Nothing is kept for a backward pass: the
        steps' products, activations and statistics go to scratch of about
        ``PREDICT_CHUNK_BYTES`` reused over time, so that memory grows with the outputs only
        (at H=256 ``forward`` allocates about 4x (RNN), 12x (GRU) and 17x (LSTM) the outputs'
        bytes, most of it kept for ``backward``).
        Raises TypeError/ValueError for bad input.
        """
        x = self._check_x(x, 3, "predict")
        self._check_params()
        T, B, I = x.shape
        H, GH = self.hidden_size, self.G * self.hidden_size
        st0 = self._check_state(state, B, "predict")
        active = self._check_lengths(lengths, T, B, "predict")
        Wx, Wh = self._p("Wx"), self._p("Wh")
        lstm = self.n_state == 2
        e = self._empty
        step_bytes = max(1, B * GH * self.dtype.itemsize)
        Tc = max(1, min(T, PREDICT_CHUNK_BYTES // step_bytes))  # steps per chunk
        h = self._work((T + 1, B, H))  # h[1:] is the output
        h[0] = st0[0]
        c = self._work((Tc + 1, B, H)) if lstm else e  # c[0]: the state before the chunk
        if lstm:
            c[0] = st0[1]
        xw = self._work((Tc, B, GH))
        hw = self._work((Tc, B, GH))
        acts, stats, cn, tmp = self._buffers(Tc, B)
        rows = None if lengths is None else prefix_rows(active)
        for t0 in range(0, T, Tc):
            n = min(Tc, T - t0)
            np.matmul(x[t0 : t0 + n].reshape(n * B, I), Wx, out=xw[:n].reshape(n * B, GH))
            note_blas(n * B, GH, I)
            self._run_steps(
                h[t0 : t0 + n + 1], c[: n + 1] if lstm else e, acts[:n] if acts.ndim == 3 else acts,
                stats[:n], cn[:n] if lstm else e, xw[:n], hw[:n], Wh, active[t0 : t0 + n], tmp,
                None if rows is None else rows[t0 : t0 + n],
            )  # fmt: skip
            if lstm:
                c[0] = c[n]  # the chunk's last state, the next one's first
        last = (h[T].copy(), c[0].copy()) if lstm else (h[T].copy(),)
        hs = h[1:]
        if lengths is not None:
            hs[~active] = 0
        return hs, last

    def backward(self, dhs, cache, dlast=None):
        """Backpropagation through time for one ``forward`` call.

        dhs: (T, B, H) gradient of the outputs; cache: from ``forward``; dlast: gradient of
        ``last`` (a state tuple) or None. Returns (dx, grads, dstate): dx (T, B, I), grads keyed
        like ``params``, dstate the gradient of the initial state (a tuple).
        """
        fn = f"{self._name}.backward"
        if not isinstance(cache, CellCache) or cache.owner is not self:
            raise ValueError(
                f"{fn}: cache does not come from this cell's forward(); pass the cache that "
                "forward() returned"
            )
        T, B, I = cache.x.shape
        H, GH = self.hidden_size, self.G * self.hidden_size
        dhs = _args.as_array(fn, "dhs", dhs)
        if dhs.shape != (T, B, H):
            raise ValueError(f"{fn}: dhs has shape {dhs.shape}, expected {(T, B, H)}")
        if dhs.dtype != self.dtype:
            raise TypeError(f"{fn}: dhs has dtype {dhs.dtype}, expected {self.dtype}")
        dst = self._check_state(dlast, B, "backward", "dlast")
        self._check_params()
        grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        Wh = self._p("Wh")
        # written whole by the steps, inactive rows included
        dxw = self._work((T, B, GH))  # gradients of x_t Wx
        dhw = dxw if self.G == 1 else self._work((T, B, GH))  # of h_{t-1} Wh (RNN: the same)
        dh0 = self._zeros((B, H))
        dc0 = self._zeros((B, H))
        tmp = self._zeros((2, 4 * H))  # step-kernel scratch (LSTM: 2 x 4H; GRU, RNN use less)
        dh = dst[0].copy()  # the kernels write into these buffers
        dc = dst[1].copy() if self.n_state == 2 else self._empty
        rows = None if cache.all_active else prefix_rows(cache.active)
        for t in range(T - 1, -1, -1):
            act = cache.active[t]
            # an ended row's output is the constant 0: its output gradient goes nowhere
            dh = dh + (dhs[t] if cache.all_active else np.where(act[:, None], dhs[t], 0))
            self._step_backward(t, cache, grads, dxw, dhw[t], dh0, dc0, dh, dc, act, tmp)
            if rows is None:
                dh = dh0 + dhw[t] @ Wh.T
            else:  # the ended rows' dhw is 0: their dh is dh0
                k = rows[t]
                dh = dh0.copy()
                dh[:k] += dhw[t][:k] @ Wh.T
            if self.n_state == 2:
                dc, dc0 = dc0, dc
        # weight gradients as one GEMM each over all steps
        grads["Wh"] += cache.h[:T].reshape(T * B, H).T @ dhw.reshape(T * B, GH)
        dxw2 = dxw.reshape(T * B, GH)
        grads["Wx"] += cache.x.reshape(T * B, I).T @ dxw2
        dx = (dxw2 @ self._p("Wx").T).reshape(T, B, I)
        note_blas(T * B, I, GH)
        dstate = (dh, np.array(dc)) if self.n_state == 2 else (dh,)
        return dx, grads, dstate

    def step(self, x_t, state=None):
        """One step without a cache, the inference path. x_t: (B, I); state: tuple or None.
        Returns the new state tuple (new arrays; the given state is not modified).

        At batch one with weights (Wx and Wh) of ``STEP_SPLIT_MIN_BYTES`` or more, the two
        matrix-vector products are split over Numba's threads (``_split_tasks``) and the step
        is one kernel call; otherwise, for ``cpu.norm.BLAS_SPIN_S`` after one of the package's
        products big enough for BLAS to use its threads, and under a threading layer with slow
        launches (``cpu.norm.SLOW_LAUNCH_LAYERS``), they go to BLAS."""
        x_t = self._check_x(x_t, 2, "step")
        B = x_t.shape[0]
        st0 = self._check_state(state, B, "step")
        lstm = self.n_state == 2
        dt, e = self.dtype, self._empty
        h = np.empty((B, self.hidden_size), dt)
        c = np.empty((B, self.hidden_size), dt) if lstm else e
        p = self.params
        try:
            Wx, Wh = p["Wx"], p["Wh"]
        except KeyError:
            self._check_params()
            raise
        if B == 1 and not blas_recent() and not slow_parallel_launch():
            nt = self._step_tasks(Wx, Wh)
            if nt and parallel_lock.acquire(False):
                try:
                    self._step_one(h, c, x_t, st0, Wx, Wh, nt)
                finally:
                    parallel_lock.release()
                return (h, c) if lstm else (h,)
        xw = x_t @ Wx
        hw = st0[0] @ Wh
        note_blas(B, Wx.shape[1], Wx.shape[0] + Wh.shape[0])
        acts, stats, cn, tmp = self._buffers(1, B)
        self._step(
            h,
            c,
            acts[0] if acts.ndim == 3 else e,
            stats[0],
            cn[0] if lstm else e,
            xw,
            hw,
            st0[0],
            st0[1] if lstm else e,
            np.ones(B, bool),
            tmp,
        )
        return (h, c) if lstm else (h,)

    def __repr__(self):
        return (
            f"{self._name}({self.input_size}, {self.hidden_size}, layer_norm={self.layer_norm}, "
            f"dtype={self.dtype})"
        )


class LSTM(_Cell):
    """Long short-term memory cell, layer-normalized by default (PAPER.md §3, gates i, f, g, o).

    ``LSTM(input_size, hidden_size, *, layer_norm=True, dtype=np.float32, seed=None, eps=1e-5,
    forget_bias=0.0)``. Parameters: Wx (I, 4H), Wh (H, 4H), b (4H); with LN also ln_x_g, ln_x_b,
    ln_h_g, ln_h_b (4H) and ln_c_g, ln_c_b (H). ``forget_bias`` initializes the forget gate's
    part of b (1.0 is a common choice). State: (h, c). See ``forward``, ``backward``, ``step``.
    """

    _name = "LSTM"
    G = 4
    n_state = 2
    _state_names = "h, c"
    _step_param_names = ("b", "ln_x_g", "ln_x_b", "ln_h_g", "ln_h_b", "ln_c_g", "ln_c_b")

    def __init__(
        self,
        input_size,
        hidden_size,
        *,
        layer_norm=True,
        dtype=np.float32,
        seed=None,
        eps=1e-5,
        forget_bias=0.0,
    ):
        self._forget_bias = float(forget_bias)
        super().__init__(
            input_size, hidden_size, layer_norm=layer_norm, dtype=dtype, seed=seed, eps=eps
        )

    def _init_params(self, rng):
        H, dt = self.hidden_size, self.dtype
        b = np.zeros(4 * H, dt)
        b[H : 2 * H] = self._forget_bias
        self.params["b"] = b
        if self.layer_norm:
            for n, size in [("x", 4 * H), ("h", 4 * H), ("c", H)]:
                self.params[f"ln_{n}_g"] = np.ones(size, dt)
                self.params[f"ln_{n}_b"] = np.zeros(size, dt)

    def _buffers(self, T, B):
        H, dt = self.hidden_size, self.dtype
        return (
            self._work((T, B, 4 * H)),
            np.zeros((T, B, 6), dt),
            self._work((T, B, H)),
            np.empty(4 * H, dt),
        )

    def _steps(self, h, c, acts, st, cn, xw, hw, Wh, active, tmp):
        _k.lstm_steps(
            h, c, acts, cn, st, xw, hw, Wh, *self._step_params(), active, self.eps,
            self.layer_norm, tmp,
        )  # fmt: skip

    def _step(self, h, c, acts, st, cn, xw, hw, h0, c0, active, tmp):
        _k.lstm_step(
            h, c, acts, cn, st, xw, hw, h0, c0, *self._step_params(), active, self.eps,
            self.layer_norm, tmp,
        )  # fmt: skip

    def _step_one(self, h, c, x, st0, Wx, Wh, nt):
        xw, hw, acts, st, cn, tmp, active = self._one_scratch()
        _k.lstm_step_one(
            h, c, acts, cn, st, xw, hw, x, st0[0], st0[1], Wx, Wh, *self._step_params(), active,
            self.eps, self.layer_norm, tmp, nt,
        )  # fmt: skip

    def _step_backward(self, t, k, g, dxw, dhw, dh0, dc0, dh, dc, active, tmp):
        p = self._p
        e = self._empty
        _k.lstm_step_backward(
            dxw[t],
            dhw,
            dh0,
            dc0,
            dh,
            dc,
            k.acts[t],
            k.cn[t],
            k.st[t],
            k.xw[t],
            k.hw[t],
            k.c[t + 1],
            k.c[t],
            p("ln_x_g"),
            p("ln_h_g"),
            p("ln_c_g"),
            g["b"],
            g.get("ln_x_g", e),
            g.get("ln_x_b", e),
            g.get("ln_h_g", e),
            g.get("ln_h_b", e),
            g.get("ln_c_g", e),
            g.get("ln_c_b", e),
            active,
            self.layer_norm,
            tmp,
        )


class GRU(_Cell):
    """Gated recurrent unit, layer-normalized by default (PAPER.md §3, gates r, z, candidate n).

    ``GRU(input_size, hidden_size, *, layer_norm=True, dtype=np.float32, seed=None, eps=1e-5)``.
    Parameters: Wx (I, 3H), Wh (H, 3H); plain: bx, bh (3H), as PyTorch's b_ih, b_hh; with LN:
    ln_x_g, ln_x_b, ln_h_g, ln_h_b (2H) and ln_xn_g, ln_xn_b, ln_hn_g, ln_hn_b (H). State: (h,).
    """

    _name = "GRU"
    G = 3
    n_state = 1
    _state_names = "h"
    _step_param_names = (
        "ln_x_g", "ln_x_b", "ln_h_g", "ln_h_b", "ln_xn_g", "ln_xn_b", "ln_hn_g", "ln_hn_b", "bx",
        "bh",
    )  # fmt: skip

    def _init_params(self, rng):
        H, dt = self.hidden_size, self.dtype
        if self.layer_norm:
            for n, size in [("x", 2 * H), ("h", 2 * H), ("xn", H), ("hn", H)]:
                self.params[f"ln_{n}_g"] = np.ones(size, dt)
                self.params[f"ln_{n}_b"] = np.zeros(size, dt)
        else:
            self.params["bx"] = np.zeros(3 * H, dt)
            self.params["bh"] = np.zeros(3 * H, dt)

    def _buffers(self, T, B):
        H, dt = self.hidden_size, self.dtype
        return (
            self._work((T, B, 4 * H)),
            np.zeros((T, B, 8), dt),
            self._empty,
            np.empty((2, 3 * H), dt),
        )

    def _steps(self, h, c, acts, st, cn, xw, hw, Wh, active, tmp):
        _k.gru_steps(
            h, acts, st, xw, hw, Wh, *self._step_params(), active, self.eps, self.layer_norm,
            tmp,
        )  # fmt: skip

    def _step(self, h, c, acts, st, cn, xw, hw, h0, c0, active, tmp):
        _k.gru_step(
            h, acts, st, xw, hw, h0, *self._step_params(), active, self.eps, self.layer_norm,
            tmp,
        )  # fmt: skip

    def _step_one(self, h, c, x, st0, Wx, Wh, nt):
        xw, hw, acts, st, cn, tmp, active = self._one_scratch()
        _k.gru_step_one(
            h, acts, st, xw, hw, x, st0[0], Wx, Wh, *self._step_params(), active, self.eps,
            self.layer_norm, tmp, nt,
        )  # fmt: skip

    def _step_backward(self, t, k, g, dxw, dhw, dh0, dc0, dh, dc, active, tmp):
        p = self._p
        e = self._empty
        _k.gru_step_backward(
            dxw[t],
            dhw,
            dh0,
            dh,
            k.acts[t],
            k.st[t],
            k.xw[t],
            k.hw[t],
            k.h[t],
            p("ln_x_g"),
            p("ln_h_g"),
            p("ln_xn_g"),
            p("ln_hn_g"),
            g.get("ln_x_g", e),
            g.get("ln_x_b", e),
            g.get("ln_h_g", e),
            g.get("ln_h_b", e),
            g.get("ln_xn_g", e),
            g.get("ln_xn_b", e),
            g.get("ln_hn_g", e),
            g.get("ln_hn_b", e),
            g.get("bx", e),
            g.get("bh", e),
            active,
            self.layer_norm,
            tmp[:, : 3 * self.hidden_size],
        )


class RNN(_Cell):
    """Elman tanh RNN, layer-normalized by default (PAPER.md §3, eq. 4).

    ``RNN(input_size, hidden_size, *, layer_norm=True, dtype=np.float32, seed=None, eps=1e-5)``.
    Parameters: Wx (I, H), Wh (H, H); LN: ln_g, ln_b (H); plain: b (H). State: (h,).
    """

    _name = "RNN"
    G = 1
    n_state = 1
    _state_names = "h"

    def _init_params(self, rng):
        H, dt = self.hidden_size, self.dtype
        if self.layer_norm:
            self.params["ln_g"] = np.ones(H, dt)
            self.params["ln_b"] = np.zeros(H, dt)
        else:
            self.params["b"] = np.zeros(H, dt)

    def _buffers(self, T, B):
        e = self._empty
        return e, np.zeros((T, B, 2), self.dtype), e, e

    def _step_params(self):
        """The parameters the step kernels take, in their order: LN gain and shift, or (none
        and) the plain bias."""
        if self.layer_norm:
            return self._p("ln_g"), self._p("ln_b")
        return self._empty, self._p("b")

    def _steps(self, h, c, acts, st, cn, xw, hw, Wh, active, tmp):
        _k.rnn_steps(h, st, xw, hw, Wh, *self._step_params(), active, self.eps, self.layer_norm)

    def _step(self, h, c, acts, st, cn, xw, hw, h0, c0, active, tmp):
        # xw becomes a = x_t Wx + h_{t-1} Wh (saved for the backward pass)
        _k.rnn_step(h, st, xw, hw, h0, *self._step_params(), active, self.eps, self.layer_norm)

    def _step_one(self, h, c, x, st0, Wx, Wh, nt):
        xw, hw, acts, st, cn, tmp, active = self._one_scratch()
        _k.rnn_step_one(
            h, st, xw, hw, x, st0[0], Wx, Wh, *self._step_params(), active, self.eps,
            self.layer_norm, nt,
        )  # fmt: skip

    def _step_backward(self, t, k, g, dxw, dhw, dh0, dc0, dh, dc, active, tmp):
        gain = self._p("ln_g") if self.layer_norm else self._empty
        dg = g["ln_g"] if self.layer_norm else self._empty
        db = g["ln_b"] if self.layer_norm else g["b"]
        _k.rnn_step_backward(
            dxw[t],
            dh0,
            dh,
            k.h[t + 1],
            k.st[t],
            k.xw[t],
            gain,
            dg,
            db,
            active,
            self.layer_norm,
            tmp[0, : self.hidden_size],
        )

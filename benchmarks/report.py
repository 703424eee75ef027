"""Runs every side-by-side benchmark in one process and regenerates BENCHMARKS.md from the
figures (nothing in BENCHMARKS.md is typed by hand).

    python benchmarks/report.py                 # run everything (several minutes), write both
    python benchmarks/report.py --quick         # shorter timing rounds
    python benchmarks/report.py --from-json     # only re-render BENCHMARKS.md from the JSON

Writes benchmarks/results.json and BENCHMARKS.md. GPU figures come from benchmarks/gpu.json,
written on a GPU machine by ``python benchmarks/gpu.py --json benchmarks/gpu.json``; without it
they are reported as not yet measured.
"""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RESULTS = HERE / "results.json"
GPU = HERE / "gpu.json"
OUT = HERE.parent / "BENCHMARKS.md"


def copy_probe_us():
    """The machine's state: the fastest of several parallel copies of a 4096x1024 float32 array
    (compare.py's roofline at that shape), in us. Its arrays are placed as compare.py's are: at
    16 bytes past a page and 16 bytes apart within one, where glibc put them once the process
    had freed large arrays, the copy took 4-6x as long."""
    import numpy as np
    from compare import best_times, copy_parallel, placed

    x, y = placed((4096, 1024), np.float32), placed((4096, 1024), np.float32)
    x[...] = 1.0
    return best_times({"copy": lambda: copy_parallel(y, x)}, 0.04, 7)["copy"] * 1e6


def collect(quick):
    import cells
    import char_lm_speed
    import compare
    import serving
    import startup

    before = copy_probe_us()
    cpu = compare.run(quick)
    cpu["info"]["copy_probe_us"] = [before, copy_probe_us()]
    data = {
        "cpu": cpu,
        "cells": cells.run(quick),
        "char_lm": char_lm_speed.run(),
        "serving": serving.run(),
        "startup": startup.run(3 if quick else 5),
    }
    try:
        import load_test

        data["load_test"] = load_test.run(16, 100)
    except ImportError:  # the serve extra is not installed
        pass
    return data


def _row(rows, shape, dtype="float32"):
    for r in rows:
        if r["shape"] == shape and r["dtype"] == dtype:
            return r
    return {}


def _check(value, target, higher=True, fmt="{:.2f}"):
    if value is None:
        return "n/a", "not measured"
    ok = value >= target if higher else value <= target
    shown = fmt.format(value)
    if not ok and shown == fmt.format(target):  # a miss that rounds to the target: one more digit
        shown = f"{value:.3f}" if fmt == "{:.2f}" else shown
    return shown, "yes" if ok else "**no**"


def _probe(info):
    """The sentence on the machine's state during the run of the CPU tables."""
    p = info.get("copy_probe_us")
    if not p:
        return "This run did not record the machine's state."
    return (
        f"During this run that copy took {p[0]:.0f} us before the tables above and {p[1]:.0f} us"
        " after them."
    )


def _stream_gains(rows):
    """'shape dtype: plain copy time / streaming copy time' for the shapes that have both."""
    return ", ".join(
        f"{r['shape']} {r['dtype']} {r['times_us']['copy'] / r['times_us']['copy_stream']:.2f}x"
        for r in rows
        if "copy_stream" in r["times_us"] and not r["shape"].startswith("1x")
    )


def _times(r, key):
    """A ratio of times from a table row as "1.23x" ("n/a" in records from before it was
    timed): ``y48_vs_y``, the forward into an output 48 bytes past x's place within a page
    against at x's place; ``dy48_vs_dy``, the backward of a dy 48 bytes past x's place against
    at it."""
    return f"{r[key]:.2f}x" if key in r else "n/a"


def _serving_floor_text(r):
    """What bounds the batch-of-one step at H=256, with the run's own figures (r: its
    serving record)."""
    import serving

    us = r.get("us", {})
    if "read_weights" not in us or "onnxruntime" not in us:
        return ""
    floor, ort, ours = us["read_weights"], us["onnxruntime"], us["lnnumba"]
    mb = r["weights_MB"]
    return f"""At H=256 a step is bound by its two matrix-vector products: {mb:.0f} MB of
weights, which lnnumba splits between the cores, each streaming its share from its own caches
(see the recurrent-cells section for the products' time alone, split and through NumPy's BLAS).
Reading the weights and nothing else (a sum over them, split as the step's products are) took
{floor:.1f} us in this run, and lnnumba's whole step {ours / floor:.2f}x that. A step 3x faster
than ONNX Runtime would take {ort / 3:.1f} us: {ort / 3 / floor:.2f}x the time to read its
weights once, with the products' arithmetic, three layer norms, the gates and the call from
Python still to fit in the rest. Each peer's calls here start after a pause of
{serving.SETTLE_S:g} s: ONNX Runtime's default threads spin for tens of milliseconds after a
run, and lnnumba's step timed right after them took 1.3-2x as long.
"""


def render(data, gpu):
    import cells
    import char_lm_speed
    import compare
    import serving
    import startup  # noqa: F401  (describe() below)

    info = data["cpu"]["info"]
    rows = data["cpu"]["results"]
    r1, r4, r8 = _row(rows, "1x1024"), _row(rows, "4096x1024"), _row(rows, "8192x4096")
    y48_4, y48_8 = _times(r4, "y48_vs_y"), _times(r8, "y48_vs_y")
    dy48_4, dy48_8 = _times(r4, "dy48_vs_dy"), _times(r8, "dy48_vs_dy")
    rms = [min(r["rms_fwd_vs_ln"], r["rms_bwd_vs_ln"]) for r in rows]
    st = data["startup"]
    cl = {(r["case"], r.get("H")): r for r in data["cells"]}
    targets_cpu = [
        ("forward 4096x1024 >= 0.80 of the copy roofline", *_check(r4.get("fwd_of_roofline"), 0.8)),
        ("forward 8192x4096 >= 0.80 of the copy roofline", *_check(r8.get("fwd_of_roofline"), 0.8)),
        (
            "forward 1x1024 through `layer_norm` >= 1.5x PyTorch (aim 3x)",
            *_check(r1.get("fwd_vs_torch"), 1.5),
        ),
        ("forward 4096x1024 >= 1.2x PyTorch", *_check(r4.get("fwd_vs_torch"), 1.2)),
        ("backward 4096x1024 >= 2x PyTorch autograd", *_check(r4.get("bwd_vs_torch"), 2.0)),
        ("backward 4096x1024 >= 0.7 of 1.5 copies", *_check(r4.get("bwd_of_roofline"), 0.7)),
        (
            "RMSNorm forward and backward at least as fast as LN (worst ratio over the table)",
            *_check(min(rms), 1.0),
        ),
        (
            "import + first call with a warm cache <= 1.0 s (NumPy and Numba only; with SciPy"
            " installed below)",
            *_check(st["plain"]["import_plus_first_call_s"], 1.0, higher=False, fmt="{:.2f} s"),
        ),
    ]
    inf, trn = cl[("inference", 256)], cl[("training", 512)]
    s256, s1024 = cl[("step", 256)], cl[("step", 1024)]
    targets_cells = [
        (
            "inference T=100 B=1 I=128 H=256 >= 3x eager PyTorch (aim 5x)",
            *_check(inf.get("vs_torch_eager"), 3.0),
        ),
        (
            "training T=100 B=32 I=256 H=512 >= 1.5x PyTorch autograd",
            *_check(trn.get("vs_torch_eager"), 1.5),
        ),
        (
            "`step` B=1 H=256 <= 1.3x its matrix-vector products (aim)",
            *_check(s256["of_floor"], 1.3, higher=False),
        ),
        (
            "`step` B=1 H=1024 <= 1.3x its matrix-vector products (aim)",
            *_check(s1024["of_floor"], 1.3, higher=False),
        ),
    ]
    clm = data["char_lm"]
    sv = {(r["H"], r.get("B", 1)): r for r in data.get("serving", [])}
    sv256 = sv.get((256, 1), {})
    targets_serving = [
        ("step B=1 I=H=256 >= 3x eager PyTorch", *_check(sv256.get("vs_torch_eager"), 3.0)),
        ("step B=1 I=H=256 >= 3x ONNX Runtime", *_check(sv256.get("vs_onnxruntime"), 3.0)),
        (
            "batched step for 64 streams costs far less than 64 single steps (no number given;"
            " the figure is how many times less)",
            "{:.2f}".format(sv.get((256, 64), {}).get("batched_vs_singles", float("nan"))),
            "see figure",
        ),
    ]

    def ttable(items):
        out = ["| target | figure | holds? |", "|---|---|---|"]
        out += [f"| {a} | {b} | {c} |" for a, b, c in items]
        return "\n".join(out)

    versions = ", ".join(
        f"{k} {info[k]}"
        for k in ("python", "numpy", "numba", "torch", "onnxruntime")
        if info.get(k)
    )
    gpu_text = _gpu_section(gpu)
    return f"""# Benchmarks

Generated by `python benchmarks/report.py` on {info["date"]} (do not edit by hand: change the
benchmarks or the template in benchmarks/report.py and regenerate). Every figure is a ratio of
times measured side by side in one process, in interleaved rounds, each time the fastest of its
rounds (each round the mean of many calls): this machine is shared and noisy, other load only
adds time, and absolute times move by 2x between runs; ratios of fastest rounds much less.

Machine: {info["machine"]}; {versions}; Numba threading layer `{info["threading_layer"]}`.

## CPU: layer norm and RMSNorm

`fwd_of_roofline` = time of a parallel copy of x into y (the bytes a forward pass moves) / the
forward's time (into `out=`); `bwd_of_roofline` = 1.5 x copy time / backward time;
`bwd_of_triad` = time of dx = x + dy (exactly the backward's bytes and working set) / backward
time. Copy and triad are each timed with ordinary and with non-temporal stores, and the faster
counts (plain copy time / streaming copy time here: {_stream_gains(rows)}). `*_vs_*` = peer
time / lnnumba time, > 1 when lnnumba is faster (forward through the public `layer_norm`,
argument checks and allocation included; ONNX Runtime runs one LayerNormalization node);
`rms_*_vs_ln` = LN time / RMSNorm time; `in_place_vs_out` = forward time into `out=` /
time in place (`out=x`, which reads and writes one array). The last two columns are lnnumba's
own times.

{compare.table(rows)}

{ttable(targets_cpu)}

Where the time goes: at 4096x1024 float32 a copy's two 16 MB arrays fit the last-level cache of
every machine measured so far (32 MB on some, 480 MB on others), so the roofline there is cache
bandwidth; whether the backward's three arrays fit too depends on the machine, which
`bwd_of_triad` (dx = x + dy, the backward's exact bytes) accounts for. At 4096x1024 float32
PyTorch's forward also runs near the copy roofline, so the forward's ratio to PyTorch there
swings with the machine's noise from run to run more than with the code. Outputs of 16 MB and
more are written with non-temporal stores (`lnnumba.cpu.stream`): a cache line at a time from
vector registers, one row at a time while the rows ahead are prefetched, so that the memory
system reads and writes at once; at 8192x4096 float32 that made the forward 1.5x and the
backward 1.3x faster than ordinary stores, and it is why a streaming copy, not a plain one, is
the roofline there. The streamed forward loads each line of x before it stores the line of y
before it, and its new y starts at x's place within a 4 KB page: a line of y 16 or 48 bytes
past x's place overlaps, in the low 12 address bits a core compares first, the next line of x,
whose load issued after the store would wait for it (1.2-1.4x at 4096x1024 float32 before
either). The tables' arrays all start 16 bytes past a page, as NumPy's large arrays do in a
fresh process; into an
`out=` 48 bytes further on, the forward took {y48_4} as long at 4096x1024 float32 in this run
and {y48_8} at 8192x4096 (an output of the caller's own, placed by whatever the process's
allocator did before). A streamed
backward's new dx starts at x's place within a page where dy starts there too (16 bytes past a
cache line for NumPy's large arrays), so that its lines and those of x and dy align alike:
1.4-1.7x at 4096x1024 float32 against dx on a line boundary. Where dy starts elsewhere, dx
starts at the place of whichever of x and dy the other follows within half a page, so that no
line of dx overlaps in those bits a line of either loaded after it; with dy 48 bytes past x's
place the backward took {dy48_4} as long at 4096x1024 float32 in this run and {dy48_8} at
8192x4096 (1.36-1.8x faster at 4096x1024 than with dx on the line boundary it took before).
Outputs allocated per call (the `ln fwd µs` and `ln bwd µs` columns include them) of 1 MB
and up come from lnnumba's pool of reused memory (`lnnumba._memory`), not from fresh pages,
which the OS zeroes on first touch (glibc maps allocations of 32 MB and up anew each time, and
smaller ones whenever its heap has handed them back); PyTorch allocates them anew.
NumPy's large arrays start 16 bytes past a cache line;
the backward's pass with ordinary stores (below 16 MB) starts its vector lines at the output's
first line boundary, and takes the columns around them as whole lines overlapping them, so
that no load or store spans two lines. The forward with ordinary stores takes rows of up to
1 KB two at a time, each column's weight and bias loaded once for both; a thread's longer rows
(64 and more, whole lines long) split their output pass at the output's line boundaries, with
the weight and bias copied to the output's place within a line, so that their vectors do not
span two lines either (weights from NumPy start at any multiple of 16 bytes). Where a thread
has 64 rows or more of up to 1 KB, it reads a copy of the weight and bias of its own: two
threads reading the same ones took 1.4-2x as long at 8192x256 float32 and shorter rows. The
streamed passes write the line where one row ends and the next begins as one line computed
with both rows' constants, so that every line is streamed whole (against the previous short
loops at each row's ends: backward 65536x64 2-3.8x faster, 4096x1024 1.0-1.3x; forward
131072x64 4.8x).

This machine is shared and has, from run to run, a fast state (a 4096x1024 float32 copy in
about 160 us) and slow ones (about 280-450 us: other load on the memory system); lnnumba's own
times move less than the copy's and PyTorch's least, so lnnumba's ratios to the roofline are
higher in a slow state and its ratios to PyTorch in the fast one. {_probe(info)}
Comparisons between commits are made side by side in one process.

## CPU: start-up

`python3 benchmarks/startup.py`: new interpreters with a warm Numba cache, each timing
`import lnnumba` and a first `layer_norm` call. Where SciPy is installed (here it comes with
scikit-learn, in the `examples` extra), Numba imports `scipy.linalg` at its first compile or
cache load in a process, to look for BLAS, whatever is compiled; the install of lnnumba alone
(NumPy and Numba) is timed with SciPy hidden from the process, alternately with this
environment as it is.

{chr(10).join("    " + line for line in startup.describe(st).splitlines())}

## CPU: recurrent cells

lnnumba's LN-LSTM against the same LN-LSTM in eager PyTorch (`F.layer_norm` + matmuls, autograd
for the backward); `torch.nn.LSTM` without LN for context. Then the LN-GRU and LN-RNN against
the same cells in eager PyTorch (T=100, I=128, H=256; inference B=1, training B=32); then each
plain cell (no LN) against the `torch.nn` cell that computes the same thing (PyTorch's fused
C++ cells, which have no LN variant), with the same sizes. Inference runs lnnumba's `predict`
(the forward without a cache), PyTorch under `no_grad`. The last lines compare a cell's
`forward`, which keeps what `backward` needs, with its `predict` at a large batch: the peak
memory each call allocates and their times.

{chr(10).join("    " + cells.describe(r) for r in data["cells"])}

{ttable(targets_cells)}

## CPU: training the char-LM (examples/char_lm.py's model)

    {char_lm_speed.describe(clm)}

{
        ttable(
            [
                (
                    "training throughput >= 2x PyTorch eager + autograd + Adam",
                    *_check(clm.get("vs_torch"), 2.0),
                )
            ]
        )
    }

## CPU: serving, one step at a time

    python benchmarks/serving.py

An LN-LSTM step at batch 1 (I = H): lnnumba's `step`, the same step in eager PyTorch, and in
ONNX Runtime (a graph of the step built with onnx.helper), in ONNX Runtime's default
configuration (one intra-op thread per core, spinning between calls) and on one thread without
spinning; then one batched step for 64 independent streams against 64 single steps. The targets
compare against ONNX Runtime's default configuration, the faster one.

{chr(10).join("    " + serving.describe(r) for r in data.get("serving", []))}

{ttable(targets_serving)}

{_load_text(data.get("load_test"))}

{_serving_floor_text(sv256)}At H=1024 the 32 MB of weights come from
memory, and each core takes its share as two tasks, one after the other
(`STEP_TWO_TASKS_MIN_SHARE` in lnnumba/nn/cells.py), which measured faster than one task a core
and than BLAS.

## GPU: CUDA kernels

{gpu_text}
"""


def _load_text(r):
    if not r:
        return "Load test of examples/serve.py: not run (the serve extra is not installed)."
    import load_test

    return (
        "Load test of examples/serve.py on loopback (`python benchmarks/load_test.py`; a "
        "char-LM of hidden size 128, prompts of 20-200 characters, micro-batching window "
        "2 ms):\n\n    " + load_test.describe(r)
    )


def _gpu_section(gpu):
    if gpu is None:
        return """Not yet measured: no GPU was available where these figures were
generated. The CUDA kernels are tested for correctness under Numba's CUDA simulator
(tests/gpu). To measure, on a GPU machine:
`python benchmarks/gpu.py --json benchmarks/gpu.json`, then `python benchmarks/report.py
--from-json`. Targets: forward >= 0.80 of a device copy and
>= 1.2x PyTorch at hidden >= 4096; backward >= 0.50 of copy bandwidth and >= 1.0x PyTorch, also
at hidden 1024; Python-side cost of one call <= 10 us.

| shape | fwd GB/s | bwd GB/s | copy GB/s | fwd / copy | bwd / copy | fwd vs torch | bwd vs torch |
|---|---|---|---|---|---|---|---|
| 65536x1024 | not yet measured | | | | | | |
| 16384x4096 | not yet measured | | | | | | |
| 4096x16384 | not yet measured | | | | | | |"""
    import gpu as gpu_bench  # the table format of benchmarks/gpu.py

    info = gpu["info"]
    rows = {r["shape"]: r for r in gpu["results"]}
    cmd = "python benchmarks/gpu.py --json benchmarks/gpu.json"
    if info.get("set"):
        cmd += "".join(f" --set {kv}" for kv in info["set"].split())
    big = [r for s, r in rows.items() if int(s.split("x")[1]) >= 4096]

    def yes(ok):
        return "yes" if ok else "**no**"

    fwd_copy = min(r["fwd_of_copy"] for r in big)
    fwd_torch = min(r.get("fwd_vs_torch", 0) for r in big)
    bwd_copy = min(r["bwd_of_copy"] for r in gpu["results"])
    bwd_torch = min(r.get("bwd_vs_torch", 0) for r in gpu["results"])
    cost = info["call_cost_us"]
    out = [
        f"{info['gpu']}, measured {info['date']} with `{cmd}`"
        + (
            " (the --set values are the defaults of lnnumba/gpu/kernels.py)."
            if info.get("set")
            else "."
        ),
        "float32; kernel times from CUDA events after warm-up, with the launches queued behind a "
        "GPU sleep so that the Python which launches them is not timed. The copy roofline is the "
        "fastest of cuMemcpyDtoD, a copy kernel and torch's `copy_`. Bytes: forward 2 M N 4, "
        "backward 3 M N 4 (x, dy, dx), timed as its two kernels into preallocated outputs.",
        "",
        gpu_bench.table(gpu["results"]),
        "",
        "| target | worst over the shapes | met |",
        "|---|---|---|",
        f"| forward >= 0.80 of copy at hidden >= 4096 | {fwd_copy:.2f} | {yes(fwd_copy >= 0.8)} |",
        f"| forward >= 1.2x PyTorch at hidden >= 4096 | {fwd_torch:.2f} | "
        f"{yes(fwd_torch >= 1.2)} |",
        f"| backward >= 0.50 of copy | {bwd_copy:.2f} | {yes(bwd_copy >= 0.5)} |",
        f"| backward >= 1.0x PyTorch | {bwd_torch:.2f} | {yes(bwd_torch >= 1.0)} |",
        f"| Python-side cost of one call <= 10 us | {cost:.1f} us | {yes(cost <= 10)} |",
        "",
        "The call cost is the wall time per `layer_norm(x, w, b, out=out)` at 1x1024, launches "
        "queued without synchronizing, the median of 25 bursts of 400 calls"
        + (
            " taken in turn with bursts of `torch.nn.functional.layer_norm`, which took "
            f"{info['torch_call_cost_us']:.1f} us. The host's speed drifts, between processes "
            "and within one: compare the two, not either with another run's."
            if "torch_call_cost_us" in info
            else "."
        ),
    ]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--from-json", action="store_true", help="re-render from results.json")
    args = ap.parse_args(argv)
    if args.from_json:
        data = json.loads(RESULTS.read_text())
    else:
        data = collect(args.quick)
        RESULTS.write_text(json.dumps(data, indent=1))
    gpu = json.loads(GPU.read_text()) if GPU.exists() else None
    OUT.write_text(render(data, gpu))
    print(f"wrote {OUT} and {RESULTS}" if not args.from_json else f"wrote {OUT}")


if __name__ == "__main__":
    main()

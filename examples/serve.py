"""An HTTP JSON API around a trained char-LM (examples/char_lm.py's checkpoint): the next-character
distribution for a text prefix, with concurrent requests micro-batched into one model call.

    python examples/char_lm.py                       # writes char_lm.npz
    python examples/serve.py --checkpoint char_lm.npz --port 8000
    curl -s localhost:8000/v1/next -d '{"text": "def __init__(self"}'

Endpoints: ``POST /v1/next`` with ``{"text": str, "top": int (default 10)}`` returns
``{"next": [[char, probability], ...]}`` (most likely first); ``GET /health``; ``GET /metrics``
(request count by status, and a latency histogram). Requests arriving within ``--window-ms`` of
each other are run as one batch: one ``predict`` (the cell's forward without a cache) over the
prefixes, of different lengths, with ``lengths`` masking. Malformed JSON, characters outside the
model's vocabulary and oversized input get a 4xx with a message. Needs the ``serve`` extra
(Starlette, uvicorn).
"""

import argparse
import asyncio
import contextlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

import lnnumba

BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


def load_char_lm(path):
    """The CharLM of examples/char_lm.py with the weights of its checkpoint, and its vocabulary."""
    spec = importlib.util.spec_from_file_location("char_lm", Path(__file__).parent / "char_lm.py")
    char_lm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(char_lm)
    params, _, meta = lnnumba.load_checkpoint(path)
    vocab = meta["vocab"]
    H = params["cell.Wh"].shape[0]
    E = params["emb.W"].shape[1]
    model = char_lm.CharLM(len(vocab), H, E, meta.get("layer_norm", True))
    for k, v in model.params.items():
        v[...] = params[k]
    return model, vocab


class Batcher:
    """Collects concurrent requests for ``window`` seconds and answers them with one predict."""

    def __init__(self, model, vocab, window, max_batch=64):
        self.model, self.vocab, self.window, self.max_batch = model, vocab, window, max_batch
        self.index = {ch: i for i, ch in enumerate(vocab)}
        self.queue = None
        self.batches = 0

    async def start(self):
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def predict(self, ids):
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((ids, fut))
        return await fut

    async def _loop(self):
        while True:
            first = await self.queue.get()
            batch = [first]
            deadline = time.perf_counter() + self.window
            while len(batch) < self.max_batch:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            try:  # the model releases the GIL: run it off the event loop
                probs = await asyncio.to_thread(self._run, [ids for ids, _ in batch])
                for (_, fut), p in zip(batch, probs):
                    fut.set_result(p)
            except Exception as e:  # answer every waiter, keep serving
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
            self.batches += 1

    def _run(self, seqs):
        """Next-character probabilities (B, V) after each id sequence, one padded batch, run
        longest first (then each step's products take only the sequences still running)."""
        order = sorted(range(len(seqs)), key=lambda b: -len(seqs[b]))
        B, T = len(seqs), len(seqs[order[0]])
        ids = np.zeros((T, B), np.int64)
        for b, i in enumerate(order):
            ids[: len(seqs[i]), b] = seqs[i]
        lengths = np.array([len(seqs[i]) for i in order])
        m = self.model
        e, _ = m.emb.forward(ids)
        _, last = m.cell.predict(e, None, lengths)
        logits = m.head.forward(last[0])[0].astype(np.float64)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out = np.empty_like(p)
        out[order] = p  # back in the requests' order
        return out


def make_app(model, vocab, window=0.002, max_chars=4096):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    batcher = Batcher(model, vocab, window)
    stats = {"requests": {}, "latency_ms": [0] * (len(BUCKETS_MS) + 1)}

    def record(status, t0):
        stats["requests"][str(status)] = stats["requests"].get(str(status), 0) + 1
        ms = (time.perf_counter() - t0) * 1e3
        i = next((k for k, b in enumerate(BUCKETS_MS) if ms <= b), len(BUCKETS_MS))
        stats["latency_ms"][i] += 1

    def error(status, msg, t0):
        record(status, t0)
        return JSONResponse({"error": msg}, status_code=status)

    async def next_char(request):
        t0 = time.perf_counter()
        body = await request.body()
        if len(body) > 4 * max_chars + 1024:
            return error(413, f"request body over {4 * max_chars + 1024} bytes", t0)
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return error(400, 'malformed JSON; expected {"text": "..."}', t0)
        if not isinstance(req, dict) or not isinstance(req.get("text"), str):
            return error(400, 'expected a JSON object with a string field "text"', t0)
        text, top = req["text"], req.get("top", 10)
        if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= len(vocab):
            return error(400, f'"top" must be an integer in [1, {len(vocab)}]', t0)
        if not text:
            return error(400, '"text" is empty; give at least one character', t0)
        if len(text) > max_chars:
            return error(413, f'"text" has {len(text)} characters, the limit is {max_chars}', t0)
        unknown = sorted({ch for ch in text if ch not in batcher.index})
        if unknown:
            return error(422, f"characters outside the model's vocabulary: {unknown[:10]}", t0)
        p = await batcher.predict([batcher.index[ch] for ch in text])
        best = np.argsort(-p)[:top]
        record(200, t0)
        return JSONResponse({"next": [[vocab[i], float(p[i])] for i in best]})

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def metrics(request):
        return JSONResponse(
            {
                "requests": stats["requests"],
                "batches": batcher.batches,
                "latency_ms_buckets": BUCKETS_MS + ["inf"],
                "latency_ms_counts": stats["latency_ms"],
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield

    routes = [
        Route("/v1/next", next_char, methods=["POST"]),
        Route("/health", health),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="char_lm.npz")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--window-ms", type=float, default=2.0)
    args = ap.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("the serve extra is needed: pip install -e '.[serve]'")
        return 1
    model, vocab = load_char_lm(args.checkpoint)
    uvicorn.run(
        make_app(model, vocab, args.window_ms / 1e3),
        host=args.host,
        port=args.port,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

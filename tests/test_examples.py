"""The examples run, and the char-LM's checkpoint/resume continues bit-identically."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def text(tmp_path):
    rng = np.random.default_rng(0)
    words = ["def", "return", "self", "None", "import", "(", ")", ":", "\n", "    ", "x", "="]
    p = tmp_path / "corpus.txt"
    p.write_text(" ".join(rng.choice(words, 3000)), encoding="utf-8")
    return p


def small(text, ck, steps, resume=False):
    args = [
        "--text",
        str(text),
        "--steps",
        str(steps),
        "--batch",
        "4",
        "--seq",
        "16",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--eval-every",
        "3",
        "--checkpoint",
        str(ck),
        "--sample",
        "0",
    ]
    return args + (["--resume"] if resume else [])


def test_char_lm_resume_is_bit_identical(tmp_path, text):
    lm = load("char_lm")
    a, curve_a, _, _ = lm.train(
        lm.parse(small(text, tmp_path / "a.npz", 9)),
        True,
        str(tmp_path / "a.npz"),
        log=lambda m: None,
    )
    lm.train(lm.parse(small(text, tmp_path / "b.npz", 6)), True, str(tmp_path / "b.npz"))
    b, curve_b, _, _ = lm.train(
        lm.parse(small(text, tmp_path / "b.npz", 9, resume=True)),
        True,
        str(tmp_path / "b.npz"),
        log=lambda m: None,
    )
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert curve_a == curve_b
    assert curve_a[-1][2] < curve_a[0][2] + 1.0  # it trains (held-out loss finite and sane)


def test_char_lm_main_runs_and_samples(tmp_path, text, capsys):
    lm = load("char_lm")
    args = small(text, tmp_path / "c.npz", 3)
    args[args.index("--sample") + 1] = "20"
    assert lm.main(args) == 0
    out = capsys.readouterr().out
    assert "held-out loss" in out and "sample" in out


def test_quickstart_runs(capsys):
    load("quickstart").main()
    assert "relative error" in capsys.readouterr().out


def test_ln_vs_bn_runs(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    assert load("ln_vs_bn").main(["--epochs", "1", "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").exists() and "layer norm" in capsys.readouterr().out


def test_long_sequences_runs(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    import sys

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        mod = load("long_sequences")
        assert mod.main(["--epochs", "1", "--plot", str(tmp_path / "p.png")]) == 0
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert "64 steps" in capsys.readouterr().out


# Starlette 1.x's test client asks for the httpx2 fork of httpx; the server does not use either
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_serve_api(tmp_path, text):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    lm = load("char_lm")
    ck = tmp_path / "s.npz"
    lm.train(lm.parse(small(text, ck, 3)), True, str(ck), log=lambda m: None)
    serve = load("serve")
    model, vocab = serve.load_char_lm(ck)
    with TestClient(serve.make_app(model, vocab)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        r = client.post("/v1/next", json={"text": "def ", "top": 3})
        assert r.status_code == 200
        nxt = r.json()["next"]
        assert len(nxt) == 3 and all(ch in vocab for ch, _ in nxt)
        assert nxt[0][1] >= nxt[1][1] >= nxt[2][1]
        # the batched answer equals running the prefix alone through step()
        st = None
        for ch in "def ":
            st = model.cell.step(model.emb.forward(np.array([vocab.index(ch)]))[0], st)
        logits = model.head.forward(st[0])[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        assert abs(nxt[0][1] - p.max()) < 1e-5
        assert client.post("/v1/next", content=b"{not json").status_code == 400
        assert client.post("/v1/next", json={"text": "\u2603"}).status_code == 422
        assert client.post("/v1/next", json={"text": "x" * 5000}).status_code == 413
        assert client.post("/v1/next", json={"text": "def", "top": 0}).status_code == 400
        m = client.get("/metrics").json()
        assert m["requests"]["200"] == 1 and m["requests"]["400"] == 2
        assert client.post("/v1/next", json={"text": "def"}).status_code == 200  # still serving
    # a batch of prefixes of different lengths, in no particular order (run longest first):
    # each row is that prefix's answer alone
    seqs = [[(3 * k + j) % len(vocab) for j in range(n)] for k, n in enumerate([2, 8, 1, 5, 15])]
    batch = serve.Batcher(model, vocab, 0.001)._run(seqs)
    for row, s in zip(batch, seqs):
        np.testing.assert_allclose(row, serve.Batcher(model, vocab, 0.001)._run([s])[0], atol=1e-6)

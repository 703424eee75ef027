"""Dask batch inference on a LocalCluster with several workers, against one machine's result."""

import numpy as np
import pytest

import lnnumba as L

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
    )
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_layer_norm_on_a_cluster(client, rng):
    from lnnumba.serve.dask import layer_norm_dask

    x = rng.standard_normal((400, 3, 16)).astype(np.float32)
    w = rng.standard_normal((3, 16)).astype(np.float32)
    dx = da.from_array(x, chunks=(50, 1, 8))  # normalized dims split across chunks on purpose
    got = layer_norm_dask(dx, w, axis=1).compute()
    np.testing.assert_array_equal(got, L.layer_norm(x, w, axis=1))
    with pytest.raises(TypeError, match="dask.array"):
        layer_norm_dask(x)


def test_saved_model_on_a_cluster(client, tmp_path, rng):
    from lnnumba.serve.dask import apply_model_dask

    net = L.Stacked("lstm", 4, 5, num_layers=2, bidirectional=True, seed=0)
    path = tmp_path / "net.npz"
    L.save_model(path, net)
    x = rng.standard_normal((6, 40, 4)).astype(np.float32)
    got = apply_model_dask(da.from_array(x, chunks=(3, 10, 4)), path).compute()
    # a chunk of 3 sequences and the batch of 6 go through BLAS in blocks of different sizes,
    # which round float32 differently over 2 layers x 40 steps
    np.testing.assert_allclose(got, net.forward(x)[0], rtol=1e-5, atol=1e-5)
    lin = L.Linear(4, 3, seed=1)
    L.save_model(tmp_path / "lin.npz", lin)
    rows = rng.standard_normal((100, 4)).astype(np.float32)
    got = apply_model_dask(da.from_array(rows, chunks=(25, 2)), tmp_path / "lin.npz").compute()
    np.testing.assert_allclose(got, lin.forward(rows)[0], rtol=1e-6, atol=1e-6)

"""The decompositions: exact at full rank, residual = discarded singular values, ALS never worse."""

import numpy as np
import pytest

from aimet_tf.compression import decompose


def _kernel(shape, seed):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("shape", [(3, 3, 4, 6), (5, 1, 3, 2), (2, 4, 5, 3)])
def test_spatial_svd_full_rank_is_exact_and_residual_is_discarded_energy(shape):
    kernel = _kernel(shape, 0)
    top = decompose.spatial_svd_max_rank(shape)
    for rank in (1, top // 2 or 1, top):
        f = decompose.spatial_svd(kernel, rank)
        assert f.vertical.shape == (shape[0], 1, shape[2], rank) and f.horizontal.shape == (1, shape[1], rank, shape[3])
        # Compose: W[i, j, c, o] = sum_k V[i, 0, c, k] H[0, j, k, o]
        composed = np.einsum("ick,jko->ijco", f.vertical[:, 0], f.horizontal[0])
        residual = np.linalg.norm(composed - kernel)
        np.testing.assert_allclose(residual, np.sqrt(np.sum(f.singular_values[rank:] ** 2)), atol=1e-9)
        np.testing.assert_allclose(residual, f.error, atol=1e-9)
    assert decompose.spatial_svd(kernel, top).error < 1e-9


@pytest.mark.parametrize("shape", [(8, 5), (1, 1, 6, 9)])
def test_weight_svd(shape):
    kernel = _kernel(shape, 1)
    matrix = kernel.reshape(shape[-2], shape[-1])
    for rank in range(1, min(matrix.shape) + 1):
        f = decompose.weight_svd(kernel, rank)
        residual = np.linalg.norm(f.first @ f.second - matrix)
        np.testing.assert_allclose(residual, np.sqrt(np.sum(f.singular_values[rank:] ** 2)), atol=1e-9)
    assert f.error < 1e-9


def test_tucker2_full_rank_exact_and_als_never_increases_error():
    kernel = _kernel((3, 3, 6, 8), 2)
    full = decompose.tucker2(kernel, 6, 8, iterations=0)
    composed = np.einsum("ia,hwab,bo->hwio", full.first[0, 0], full.core, full.last[0, 0])
    np.testing.assert_allclose(composed, kernel, atol=1e-9)
    for seed in range(4):
        kernel = _kernel((3, 3, 10, 12), seed)
        f = decompose.tucker2(kernel, 3, 4, iterations=15)
        assert all(b <= a + 1e-9 for a, b in zip(f.errors, f.errors[1:]))
        assert f.errors[-1] < f.errors[0]
        composed = np.einsum("ia,hwab,bo->hwio", f.first[0, 0], f.core, f.last[0, 0])
        np.testing.assert_allclose(np.linalg.norm(composed - kernel), f.errors[-1], rtol=1e-6)


def test_bad_ranks_and_shapes():
    with pytest.raises(ValueError, match=r"rank in \[1, 6\]"):
        decompose.spatial_svd(_kernel((3, 3, 2, 4), 0), 7)
    with pytest.raises(ValueError, match="2-D conv kernel"):
        decompose.spatial_svd(_kernel((3, 4, 2), 0), 1)
    with pytest.raises(TypeError, match="integer rank"):
        decompose.weight_svd(_kernel((4, 4), 0), 1.5)
    with pytest.raises(ValueError, match=r"rank_out in \[1, 4\]"):
        decompose.tucker2(_kernel((3, 3, 2, 4), 0), 1, 5)
    with pytest.raises(ValueError, match="iterations >= 0"):
        decompose.tucker2(_kernel((3, 3, 2, 4), 0), 1, 1, iterations=-1)

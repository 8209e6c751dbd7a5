"""Tensor decompositions behind the compression schemes: pure numpy, Keras kernel layouts.

Kernels are Keras' channels-last layouts: a 2-D conv kernel is ``[kh, kw, c_in, c_out]``, a Dense
kernel ``[in, out]``. Every function returns the factors as kernels of the layers that replace
the original one, applied one after the other, and computes in float64.

* Spatial SVD (Jaderberg et al. 2014, AIMET's spatial SVD). ``M[(c, i), (j, o)] = W[i, j, c, o]``
  is a ``(c_in kh) x (kw c_out)`` matrix; its rank-r SVD ``U_r S_r V_r^T`` gives a ``kh x 1`` conv
  ``c_in -> r`` with kernel ``U_r sqrt(S_r)`` and a ``1 x kw`` conv ``r -> c_out`` with kernel
  ``sqrt(S_r) V_r^T``. The squared Frobenius error of the composed kernel is the sum of the
  discarded squared singular values.
* Weight SVD. A Dense (or 1x1 conv) kernel ``[in, out] = U S V^T`` becomes ``[in, r] = U_r sqrt(S_r)``
  then ``[r, out] = sqrt(S_r) V_r^T``; same error.
* Tucker-2 (Kim et al. 2016). ``W ~ G x_3 U_in x_4 U_out`` with orthonormal ``U_in [c_in, r_in]``
  and ``U_out [c_out, r_out]``: a 1x1 conv ``c_in -> r_in`` (``U_in``), the ``kh x kw`` core
  ``G [kh, kw, r_in, r_out]``, then a 1x1 conv ``r_out -> c_out`` (``U_out^T``). HOSVD starts it;
  alternating least squares (HOOI) refines it, never increasing the error.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "SpatialSvdFactors",
    "TuckerFactors",
    "WeightSvdFactors",
    "spatial_svd",
    "spatial_svd_max_rank",
    "tucker2",
    "weight_svd",
]


def _check_rank(rank: int, largest: int, what: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"Expected an integer {what}. Received: {rank!r} ({type(rank).__name__})")
    if not 1 <= int(rank) <= largest:
        raise ValueError(f"Expected {what} in [1, {largest}]. Received: {rank}")
    return int(rank)


def _conv_kernel(kernel: np.ndarray) -> np.ndarray:
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"Expected a 2-D conv kernel [kh, kw, c_in, c_out]. Received shape {kernel.shape}")
    return kernel


@dataclasses.dataclass(frozen=True)
class SpatialSvdFactors:
    """``vertical [kh, 1, c_in, r]`` then ``horizontal [1, kw, r, c_out]``; ``error`` is the
    Frobenius norm of the kernel's residual, ``singular_values`` all of them, descending."""

    vertical: np.ndarray
    horizontal: np.ndarray
    error: float
    singular_values: np.ndarray


def spatial_svd_max_rank(kernel_shape: tuple[int, ...]) -> int:
    """The rank at which spatial SVD is exact: min(c_in kh, kw c_out)."""
    kh, kw, c_in, c_out = kernel_shape
    return min(c_in * kh, kw * c_out)


def spatial_svd(kernel: np.ndarray, rank: int) -> SpatialSvdFactors:
    """Rank-``rank`` spatial SVD of a ``[kh, kw, c_in, c_out]`` kernel (see the module docstring).

    Raises:
        ValueError: for a kernel that is not 4-D, or a rank outside [1, min(c_in kh, kw c_out)].
    """
    kernel = _conv_kernel(kernel)
    kh, kw, c_in, c_out = kernel.shape
    rank = _check_rank(rank, spatial_svd_max_rank(kernel.shape), "rank")
    matrix = kernel.transpose(2, 0, 1, 3).reshape(c_in * kh, kw * c_out)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    root = np.sqrt(s[:rank])
    left = u[:, :rank] * root  # [(c, i), r]
    right = root[:, None] * vt[:rank]  # [r, (j, o)]
    vertical = left.reshape(c_in, kh, rank).transpose(1, 0, 2)[:, None, :, :]
    horizontal = right.reshape(rank, kw, c_out).transpose(1, 0, 2)[None, :, :, :]
    return SpatialSvdFactors(vertical, horizontal, float(np.sqrt(np.sum(s[rank:] ** 2))), s)


@dataclasses.dataclass(frozen=True)
class WeightSvdFactors:
    """``first [in, r]`` then ``second [r, out]``; ``error`` as in :class:`SpatialSvdFactors`."""

    first: np.ndarray
    second: np.ndarray
    error: float
    singular_values: np.ndarray


def weight_svd(kernel: np.ndarray, rank: int) -> WeightSvdFactors:
    """Rank-``rank`` SVD of a Dense kernel ``[in, out]`` (a 1x1 conv kernel ``[1, 1, in, out]`` too).

    Raises:
        ValueError: for another shape, or a rank outside [1, min(in, out)].
    """
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim == 4 and kernel.shape[:2] == (1, 1):
        kernel = kernel[0, 0]
    if kernel.ndim != 2:
        raise ValueError(f"Expected a Dense kernel [in, out] or a 1x1 conv kernel. Received shape {kernel.shape}")
    rank = _check_rank(rank, min(kernel.shape), "rank")
    u, s, vt = np.linalg.svd(kernel, full_matrices=False)
    root = np.sqrt(s[:rank])
    return WeightSvdFactors(u[:, :rank] * root, root[:, None] * vt[:rank], float(np.sqrt(np.sum(s[rank:] ** 2))), s)


@dataclasses.dataclass(frozen=True)
class TuckerFactors:
    """``first [1, 1, c_in, r_in]``, ``core [kh, kw, r_in, r_out]``, ``last [1, 1, r_out, c_out]``;
    ``errors[k]`` is the kernel's residual Frobenius norm after k ALS iterations (k = 0: HOSVD)."""

    first: np.ndarray
    core: np.ndarray
    last: np.ndarray
    errors: tuple[float, ...]


def _leading(matrix: np.ndarray, rank: int) -> np.ndarray:
    return np.linalg.svd(matrix, full_matrices=False)[0][:, :rank]


def _tucker_core(kernel: np.ndarray, u_in: np.ndarray, u_out: np.ndarray) -> np.ndarray:
    return np.einsum("hwio,ia,ob->hwab", kernel, u_in, u_out)


def tucker2(kernel: np.ndarray, rank_in: int, rank_out: int, iterations: int = 10) -> TuckerFactors:
    """Tucker-2 of a ``[kh, kw, c_in, c_out]`` kernel on its channel modes, HOSVD + ALS.

    Args:
        kernel: the conv kernel.
        rank_in: the first 1x1 conv's output channels, in [1, c_in].
        rank_out: the core's output channels, in [1, c_out].
        iterations: ALS (HOOI) sweeps after the HOSVD start, >= 0.

    Raises:
        ValueError: for a kernel that is not 4-D, ranks out of range, or iterations < 0.
    """
    kernel = _conv_kernel(kernel)
    kh, kw, c_in, c_out = kernel.shape
    rank_in = _check_rank(rank_in, c_in, "rank_in")
    rank_out = _check_rank(rank_out, c_out, "rank_out")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"Expected iterations >= 0. Received: {iterations!r}")
    norm = np.linalg.norm(kernel)

    def error(u_in, u_out):
        # With orthonormal factors the residual is sqrt(|W|^2 - |G|^2).
        return float(np.sqrt(max(norm**2 - np.sum(_tucker_core(kernel, u_in, u_out) ** 2), 0.0)))

    u_in = _leading(kernel.transpose(2, 0, 1, 3).reshape(c_in, -1), rank_in)
    u_out = _leading(kernel.transpose(3, 0, 1, 2).reshape(c_out, -1), rank_out)
    errors = [error(u_in, u_out)]
    for _ in range(int(iterations)):
        projected = np.einsum("hwio,ob->hwib", kernel, u_out)
        u_in = _leading(projected.transpose(2, 0, 1, 3).reshape(c_in, -1), rank_in)
        projected = np.einsum("hwio,ia->hwao", kernel, u_in)
        u_out = _leading(projected.transpose(3, 0, 1, 2).reshape(c_out, -1), rank_out)
        errors.append(error(u_in, u_out))
    core = _tucker_core(kernel, u_in, u_out)
    return TuckerFactors(u_in[None, None], core, u_out.T[None, None], tuple(errors))

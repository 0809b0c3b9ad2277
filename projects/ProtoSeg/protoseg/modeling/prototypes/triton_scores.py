"""The cosine pixel-prototype scores of :mod:`.scores` as fused Triton kernels, without the
(N, C*K) similarity matrix, in the way flash attention avoids its (N, N) attention matrix.

For x (N, D) and prototypes P (K*C, D) (prototype-major: row k*C + c = prototype k of class c),
S = x P^T is never written to memory. The forward kernel gives each program BLOCK_N pixels and
walks over the prototypes class tile by class tile (BLOCK_C classes) and, within a tile, over
k = 0..K-1: the prototype-major layout makes the rows k*C + c0 .. k*C + c0 + BLOCK_C - 1
contiguous. Each step computes one (BLOCK_N, BLOCK_C) tile of S (a loop over D in BLOCK_D
chunks) and folds it into
- the running maximum over k of the tile's classes and its first argmax (strict ``>``: ties keep
  the smaller k, as ``torch.max``), written out once the K steps of the tile are done;
- the own-class similarity own[i, k] for the pixels whose label lies in the tile;
- an online log-sum-exp: a running row maximum m_i and a running sum l_i of exp((S - m_i) / tau),
  rescaled when m_i grows; lse_i = m_i / tau + log l_i.
The backward kernel recomputes each tile of S and forms the tile of dL/dS,
    g_ij = grad_lse_i * exp((S_ij - m_i) / tau) / (l_i * tau)
           + [k = best_ic] grad_scores_ic + [c = label_i] grad_own_ik     (j = k*C + c),
the gradient :class:`.scores._FusedCosineScores` writes into its (N, C*K) buffer, and adds g P_tile
to grad_x (N, D). grad_x is accumulated in global memory D chunk by D chunk: a program owns its
pixel rows, so no atomics are needed, and D (hundreds) is too wide for a register accumulator.

Triton is optional: this module imports without it, :func:`triton_available` says whether it can
run, and nothing else of the package uses it unless asked. The kernels run on CUDA tensors, or on
CPU tensors under the Triton interpreter: ``TRITON_INTERPRET=1`` in the environment before triton
is first imported (``triton.jit`` decides at definition time, for triton.language's own helpers
too; importing protoseg imports triton). tests/conftest.py sets it on machines without CUDA.

Precision "bfloat16": x and P are rounded to bfloat16 values on the host (a float32 copy of x), g
in the kernel; the products accumulate in float32, on CUDA as bfloat16 tensor-core products, under
the interpreter (whose bfloat16 products are wrong) as float32 products of the same values.
"""
import os
from typing import Optional, Tuple

import torch

from .scores import check_precision, prototype_major

try:  # optional dependency
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["TritonCosineScores", "triton_available", "triton_prototype_scores", "DEFAULT_BLOCKS", "NUM_WARPS"]

#: (BLOCK_N pixels, BLOCK_C classes, BLOCK_D embedding channels) per program step. Powers of two,
#: at least 16 (``tl.dot``). Not tuned for speed: chosen, with :data:`NUM_WARPS`, as a configuration
#: that ptxas compiles for sm_90 with (nearly) no register spills in all three precisions.
DEFAULT_BLOCKS = (64, 64, 32)
#: Warps per program of both kernels (a (64, 64) float32 tile is 16 registers per thread at 8).
NUM_WARPS = 8

# tl.dot's input_precision per MODEL.PROTOSEG.SIMILARITY_PRECISION ("bfloat16" rounds the inputs of
# the products to bfloat16 and accumulates in float32).
_INPUT_PRECISION = {"float32": "ieee", "tf32": "tf32", "bfloat16": "ieee"}


def triton_available() -> bool:
    """Whether Triton is importable. The kernels additionally need CUDA tensors, or the
    interpreter (``TRITON_INTERPRET=1`` set before triton was imported) for CPU tensors."""
    return triton is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


if triton is not None:

    @triton.jit
    def _round_to_bfloat16(v):
        """float32 -> the nearest bfloat16 value (ties to even), still float32. By its bits: the
        interpreter's float32 -> bfloat16 cast truncates instead of rounding (NaN is not handled)."""
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _tile_similarities(
        x_ptr, p_ptr, rows64, row_mask, cols, col_mask, k, C, D, stride_x, stride_p,
        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, BF16_DOT: tl.constexpr,
    ):
        """(BLOCK_N, BLOCK_C) tile S[rows, k*C + cols] = x[rows] . P[k*C + cols], float32;
        0 where a row or a column is out of range. BF16_DOT: multiply as bfloat16 (the inputs
        are bfloat16 values already), accumulate in float32."""
        proto_rows64 = (k * C + cols).to(tl.int64)
        acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            d_mask = d < D
            xs = tl.load(x_ptr + rows64[:, None] * stride_x + d[None, :],
                         mask=row_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
            ps = tl.load(p_ptr + proto_rows64[None, :] * stride_p + d[:, None],
                         mask=col_mask[None, :] & d_mask[:, None], other=0.0)  # (BLOCK_D, BLOCK_C)
            if BF16_DOT:
                xs = xs.to(tl.bfloat16)
                ps = ps.to(tl.bfloat16)
            acc = tl.dot(xs, ps, acc, input_precision=INPUT_PRECISION)
        return acc

    @triton.jit
    def _scores_fwd_kernel(
        x_ptr, p_ptr, labels_ptr, scores_ptr, best_ptr, own_ptr, row_max_ptr, row_sum_ptr,
        N, C, K, D, inv_tau, stride_x, stride_p,
        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, BF16_DOT: tl.constexpr,
    ):
        """One program: pixels [pid * BLOCK_N, (pid + 1) * BLOCK_N).

        x (N, D), P (K*C, D) prototype-major, labels (N,) in [0, C) -> scores (N, C),
        best (N, C) int32 (first argmax over k), own (N, K), row_max (N,) = max_j S_ij,
        row_sum (N,) = sum_j exp((S_ij - row_max_i) / tau).
        """
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        rows64 = rows.to(tl.int64)
        labels = tl.load(labels_ptr + rows, mask=row_mask, other=-1)
        m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
        l = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            col_mask = cols < C
            own_here = row_mask & (labels >= c0) & (labels < c0 + BLOCK_C)
            is_own = cols[None, :] == labels[:, None]
            top = tl.full((BLOCK_N, BLOCK_C), float("-inf"), dtype=tl.float32)
            best = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.int32)
            for k in range(0, K):
                s = _tile_similarities(x_ptr, p_ptr, rows64, row_mask, cols, col_mask, k, C, D,
                                       stride_x, stride_p, BLOCK_N, BLOCK_C, BLOCK_D,
                                       INPUT_PRECISION, BF16_DOT)
                s = tl.where(col_mask[None, :], s, float("-inf"))
                # class maximum over k; strict >: the first k wins a tie (k = 0 always beats -inf)
                better = s > top
                top = tl.where(better, s, top)
                best = tl.where(better, k, best)
                # own-class similarity of the pixels whose label is in this tile
                own_k = tl.sum(tl.where(is_own, s, 0.0), axis=1)
                tl.store(own_ptr + rows64 * K + k, own_k, mask=own_here)
                # online log-sum-exp (every tile has a valid column, so m_new is finite)
                m_new = tl.maximum(m, tl.max(s, axis=1))
                l = l * tl.exp((m - m_new) * inv_tau) + tl.sum(tl.exp((s - m_new[:, None]) * inv_tau), axis=1)
                m = m_new
            out = rows64[:, None] * C + cols[None, :]
            out_mask = row_mask[:, None] & col_mask[None, :]
            tl.store(scores_ptr + out, top, mask=out_mask)
            tl.store(best_ptr + out, best, mask=out_mask)
        tl.store(row_max_ptr + rows, m, mask=row_mask)
        tl.store(row_sum_ptr + rows, l, mask=row_mask)

    @triton.jit
    def _scores_bwd_kernel(
        x_ptr, p_ptr, labels_ptr, best_ptr, row_max_ptr, coef_ptr, grad_scores_ptr, grad_own_ptr,
        grad_x_ptr, N, C, K, D, inv_tau, stride_x, stride_p,
        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr, BF16_DOT: tl.constexpr,
    ):
        """One program: pixels [pid * BLOCK_N, (pid + 1) * BLOCK_N).

        grad_x (N, D), zero on entry, += sum_j g_ij P_j with g as in the module docstring;
        coef (N,) = grad_lse / (row_sum * tau); best (N, C) int32; grad_scores (N, C);
        grad_own (N, K).
        """
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        rows64 = rows.to(tl.int64)
        labels = tl.load(labels_ptr + rows, mask=row_mask, other=-1)
        m = tl.load(row_max_ptr + rows, mask=row_mask, other=0.0)
        coef = tl.load(coef_ptr + rows, mask=row_mask, other=0.0)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            col_mask = cols < C
            tile_mask = row_mask[:, None] & col_mask[None, :]
            is_own = cols[None, :] == labels[:, None]
            tile = rows64[:, None] * C + cols[None, :]
            best = tl.load(best_ptr + tile, mask=tile_mask, other=-1)
            grad_scores = tl.load(grad_scores_ptr + tile, mask=tile_mask, other=0.0)
            for k in range(0, K):
                s = _tile_similarities(x_ptr, p_ptr, rows64, row_mask, cols, col_mask, k, C, D,
                                       stride_x, stride_p, BLOCK_N, BLOCK_C, BLOCK_D,
                                       INPUT_PRECISION, BF16_DOT)
                grad_own_k = tl.load(grad_own_ptr + rows64 * K + k, mask=row_mask, other=0.0)
                g = coef[:, None] * tl.exp((s - m[:, None]) * inv_tau)
                g += tl.where(best == k, grad_scores, 0.0)
                g += tl.where(is_own, grad_own_k[:, None], 0.0)
                g = tl.where(tile_mask, g, 0.0)
                if ROUND_BF16:
                    g = _round_to_bfloat16(g)
                if BF16_DOT:
                    g = g.to(tl.bfloat16)  # exact: already a bfloat16 value
                proto_rows64 = (k * C + cols).to(tl.int64)
                for d0 in range(0, D, BLOCK_D):
                    d = d0 + tl.arange(0, BLOCK_D)
                    d_mask = d < D
                    ps = tl.load(p_ptr + proto_rows64[:, None] * stride_p + d[None, :],
                                 mask=col_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_C, BLOCK_D)
                    if BF16_DOT:
                        ps = ps.to(tl.bfloat16)
                    gx_ptrs = grad_x_ptr + rows64[:, None] * D + d[None, :]
                    gx_mask = row_mask[:, None] & d_mask[None, :]
                    gx = tl.load(gx_ptrs, mask=gx_mask, other=0.0)
                    gx = tl.dot(g, ps, gx, input_precision=INPUT_PRECISION)
                    tl.store(gx_ptrs, gx, mask=gx_mask)
                    # the next read of these addresses may come from other threads of the program
                    tl.debug_barrier()


def _bf16_dot(precision: str) -> bool:
    """Whether the kernels multiply bfloat16 tensors (tensor cores) for ``precision``. Not under the
    interpreter, whose bfloat16 products are wrong: there the same bfloat16 values are multiplied
    as float32, which gives the same float32-accumulated products."""
    return precision == "bfloat16" and not _interpreting()


def _check_runnable(x: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError("the Triton prototype-score kernels need the `triton` package (pip install triton)")
    if not x.is_cuda and not _interpreting():
        raise RuntimeError(
            "the Triton prototype-score kernels run on CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
            "before triton is first imported (the interpreter, slow)"
        )


class TritonCosineScores(torch.autograd.Function):
    """The outputs of :class:`.scores._FusedCosineScores`: ``apply(x, protos, labels, num_classes,
    temperature, precision[, blocks])`` (no chunk size: nothing of size N x C*K is ever kept).

    x (N, D) float32; protos (K*C, D) prototype-major, no gradient; labels (N,) int in [0, C).
    Returns scores (N, C) = max_k S[i, c, k], own (N, K) = S[i, label_i, :], lse (N,) =
    logsumexp_j(S[i, j] / tau), all float32 and differentiable with respect to x only.
    ``precision`` is one of :data:`.scores.SIMILARITY_PRECISIONS` and applies to both products;
    ``blocks``: (BLOCK_N, BLOCK_C, BLOCK_D), default :data:`DEFAULT_BLOCKS`.
    Saved for the backward: x, protos, labels, best (N, C) int32 (the first argmax over k), the
    row maximum m and the row sum l of the log-sum-exp (N,) each.
    """

    @staticmethod
    def forward(ctx, x, protos, labels, num_classes: int, temperature: float,
                precision: str = "float32", blocks: Optional[Tuple[int, int, int]] = None):
        check_precision(precision)
        _check_runnable(x)
        x = x.contiguous()
        protos = protos.contiguous()
        labels = labels.contiguous()
        if precision == "bfloat16":  # the products' inputs; both kernels multiply these
            x, protos = x.bfloat16().float(), protos.bfloat16().float()
        n, D = x.shape
        C = num_classes
        K = protos.shape[0] // C
        block_n, block_c, block_d = blocks or DEFAULT_BLOCKS
        scores = x.new_empty(n, C)
        best = torch.empty(n, C, dtype=torch.int32, device=x.device)
        own = x.new_empty(n, K)
        row_max, row_sum = x.new_empty(n), x.new_empty(n)
        if n > 0:
            _scores_fwd_kernel[(triton.cdiv(n, block_n),)](
                x, protos, labels, scores, best, own, row_max, row_sum,
                n, C, K, D, 1.0 / temperature, x.stride(0), protos.stride(0),
                BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_D=block_d,
                INPUT_PRECISION=_INPUT_PRECISION[precision], BF16_DOT=_bf16_dot(precision),
                num_warps=NUM_WARPS,
            )
        lse = row_max / temperature + row_sum.log()
        ctx.save_for_backward(x, protos, labels, best, row_max, row_sum)
        ctx.num_classes, ctx.temperature, ctx.precision, ctx.blocks = C, temperature, precision, (block_n, block_c, block_d)
        return scores, own, lse

    @staticmethod
    def backward(ctx, grad_scores, grad_own, grad_lse):
        x, protos, labels, best, row_max, row_sum = ctx.saved_tensors
        n, D = x.shape
        C, tau = ctx.num_classes, ctx.temperature
        K = protos.shape[0] // C
        block_n, block_c, block_d = ctx.blocks
        grad_x = torch.zeros_like(x)
        if n > 0:
            # d lse_i / d S_ij = exp((S_ij - m_i) / tau) / (row_sum_i * tau)
            coef = (grad_lse.float() / (row_sum * tau)).contiguous()
            _scores_bwd_kernel[(triton.cdiv(n, block_n),)](
                x, protos, labels, best, row_max, coef,
                grad_scores.float().contiguous(), grad_own.float().contiguous(), grad_x,
                n, C, K, D, 1.0 / tau, x.stride(0), protos.stride(0),
                BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_D=block_d,
                INPUT_PRECISION=_INPUT_PRECISION[ctx.precision], ROUND_BF16=ctx.precision == "bfloat16",
                BF16_DOT=_bf16_dot(ctx.precision), num_warps=NUM_WARPS,
            )
        return grad_x, None, None, None, None, None, None


def triton_prototype_scores(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    precision: str = "float32",
    blocks: Optional[Tuple[int, int, int]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`.scores.prototype_scores` for cosine similarity, computed by the Triton kernels.

    Args:
        x: (N, D) pixel embeddings (unit vectors). prototypes: (C, K, D), no gradient.
        labels: (N,) int64; entries outside [0, C) (ignored pixels) get meaningless own-class rows.
        temperature: tau of PPC. precision: one of :data:`.scores.SIMILARITY_PRECISIONS`.
        blocks: (BLOCK_N, BLOCK_C, BLOCK_D), powers of two >= 16; default :data:`DEFAULT_BLOCKS`.
    Returns:
        class_scores (N, C), own (N, K), lse (N,): float32, differentiable with respect to x.
    """
    C = prototypes.shape[0]
    labels = labels.clamp(0, C - 1)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return TritonCosineScores.apply(
            x.float(), prototype_major(prototypes.float()), labels, C, temperature, precision, blocks
        )

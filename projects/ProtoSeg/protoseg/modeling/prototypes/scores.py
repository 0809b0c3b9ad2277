"""What the head needs from the (N, C*K) pixel-prototype similarities, computed without keeping
more than one such matrix (or one chunk of it) alive.

From the similarities S (N, C*K) the head needs only three small things:
- the class scores max_k S[i, c, k] (N, C)                         -> CE (Eq. 6-7), prediction;
- the similarities to the K prototypes of the pixel's own class (N, K) -> clustering, PPD, and the
  PPC target logit (the PPC target is always one of the pixel's own-class prototypes);
- lse_i = log sum_j exp(S[i, j] / tau) (N,)                        -> PPC (Eq. 11) = lse - S[i, t] / tau.
Autograd through ``S / tau``, ``log_softmax``, ``max`` and ``gather`` keeps several N x C*K
tensors and makes several passes over them in the backward. For cosine similarity (a plain
product) :class:`_FusedCosineScores` writes the gradient of all three into one N x C*K buffer and
multiplies once by the prototypes. With ``chunk_size`` > 0 it works on ``chunk_size`` pixels at a
time and recomputes the product in the backward: memory O(chunk_size * C * K) instead of
O(N * C * K), at the price of one more product.

Layout. Internally the similarity matrix is computed prototype-major, column k*C + c (a (N, K, C)
view), not class-major c*K + k: the maximum over K is then an elementwise maximum of K contiguous
(N, C) slices, which vectorises over the classes, where a reduction over an innermost dimension of
size 10 does not (lab/BENCHMARKS.md, "Measurements behind the code"). Everything returned is in
the public class-major order.

Passes. The forward makes, after the product, one pass for the class maximum and its argmax (on
CPU from 64 classes on: an ``amax``, then the argmax in cached row blocks), and three for the PPC
log-sum-exp: ``(S - m_i) / tau`` in one fused ``add``, ``exp_`` and a row sum, where
m_i = max_c scores[i, c] is the row maximum, read off the class scores for free. The buffer then
holds exp((S - m_i) / tau), which is softmax(S / tau) up to a per-row factor; the backward scales it in place (one pass) instead of recomputing the softmax.
"""
from contextlib import contextmanager
from typing import Iterator, Tuple

import torch

from .distances import pairwise_similarity

__all__ = [
    "prototype_scores", "class_maxima", "own_class_similarities", "nearest_prototype_scores", "SIMILARITY_PRECISIONS"
]

#: MODEL.PROTOSEG.SIMILARITY_PRECISION: precision of the cosine product x @ P^T (training forward,
#: the backward's products for the gradient of x, and inference). "float32": exact float32 (the
#: default, exact); "tf32": float32 tensors, TF32 tensor cores allowed for these
#: products only (CUDA; on CPU the same as float32); "bfloat16": x and P rounded to bfloat16, the
#: product accumulated and returned in float32 (``out_dtype`` on CUDA; on CPU the same product
#: computed in float32 from the rounded inputs, no faster than float32: see :func:`_bf16_mm`). The
#: class maximum, log-sum-exp, Sinkhorn, the update and the prototype buffer stay float32.
#: Euclidean and Huber distances are always computed in float32 (tf32 applies to their forward).
SIMILARITY_PRECISIONS = ("float32", "tf32", "bfloat16")

# Rows per block in the argmax over K: a (block, K, C) bool/uint8 temporary of at most a few MB.
_ARGMAX_BLOCK_ELEMENTS = 1 << 23
_MIN_CLASSES_BLOCKED_ARGMAX = 64


def check_precision(precision: str) -> None:
    if precision not in SIMILARITY_PRECISIONS:
        raise ValueError(f"similarity precision must be one of {SIMILARITY_PRECISIONS}, got {precision!r}")


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Within: TF32 allowed for float32 CUDA products when ``precision`` is "tf32" (restored on
    exit); otherwise nothing changes. Only ``torch.backends.cuda.matmul.allow_tf32`` (which
    ``torch.get_float32_matmul_precision()`` reports as "high" meanwhile): the global
    ``torch.set_float32_matmul_precision`` would also switch oneDNN's CPU products to TF32, and
    PyTorch refuses to read the flag once the legacy and the new (``fp32_precision``) APIs are mixed."""
    if precision != "tf32":
        yield
        return
    old_allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_allow


def _bf16_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b (bfloat16 tensors) -> float32, accumulated and returned in float32, without rounding
    the output to bfloat16. On CUDA without gradient: ``torch.mm(..., out_dtype=torch.float32)``
    (tensor cores). Elsewhere (CPU, which has no ``out_dtype`` kernel; or a product recorded for
    autograd, which ``out_dtype`` lacks): the product of the bfloat16 values computed in float32
    (products of bfloat16 numbers are exact in float32; only the order of the sums differs), as fast
    as float32. Not a bfloat16 product cast up (``torch.mm(a, b).float()``): that rounds the output
    to 8 bits too, which changes about three times as many class argmaxes (lab/BENCHMARKS.md).
    Autocast is off inside (it would recast the inputs)."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        if a.is_cuda and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
            return torch.mm(a, b, out_dtype=torch.float32)
        return torch.mm(a.float(), b.float())


def _product(x: torch.Tensor, protos: torch.Tensor, protos_bf16) -> torch.Tensor:
    """x (n, D) @ protos (M, D)^T in float32, or from bfloat16 inputs when ``protos_bf16`` (the
    bfloat16 copy of ``protos``) is given."""
    if protos_bf16 is None:
        return x @ protos.t()
    return _bf16_mm(x.bfloat16(), protos_bf16.t())


def class_maxima(proto_logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 6: score of a class = similarity to its nearest prototype. (N, C*K) similarities in
    class-major order -> (N, C).

    ``max(...).values`` rather than ``amax``: its backward is a scatter of N*C values, where amax's
    is several passes over the whole (N, C, K) tensor.
    """
    return proto_logits.view(proto_logits.shape[0], num_classes, -1).max(-1).values


def own_class_similarities(proto_logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C*K) similarities (class-major columns c*K + k), (N,) labels in [0, C) -> (N, K)
    similarities to the prototypes of each pixel's own class."""
    view = proto_logits.view(proto_logits.shape[0], num_classes, -1)
    return view[torch.arange(view.shape[0], device=view.device), labels]


def prototype_major(prototypes: torch.Tensor) -> torch.Tensor:
    """(C, K, D) -> (K*C, D) contiguous copy, row k*C + c = prototype k of class c."""
    C, K, D = prototypes.shape
    # one copy, also when the transpose is already contiguous (C or K = 1) and reshape would not copy
    return prototypes.transpose(0, 1).clone(memory_format=torch.contiguous_format).view(K * C, D)


def nearest_prototype_scores(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    distance: str = "cosine",
    huber_delta: float = 0.1,
    chunk_size: int = 0,
    precision: str = "float32",
) -> torch.Tensor:
    """Eq. 6 at inference: score of class c = similarity to its nearest prototype.

    Args:
        x: (N, D) embeddings. prototypes: (C, K, D).
        chunk_size: > 0 computes ``chunk_size`` pixels at a time, so that at most chunk_size x C*K
            similarities exist at once (large images with many classes); 0: all at once.
        precision: one of :data:`SIMILARITY_PRECISIONS` (cosine product; "bfloat16" returns float32).
    Returns:
        (N, C) max_k sim(x_i, p_{c,k}); no (N, C*K) tensor other than the similarities themselves.
        For cosine the result is the transpose of a contiguous (C, N) tensor: the product is
        computed as P @ x^T, (C*K, N), which MKL runs faster than x @ P^T (lab/BENCHMARKS.md), and
        the maximum over K is then an elementwise maximum of K contiguous (C, N) slabs.
    """
    check_precision(precision)
    C, K, _ = prototypes.shape
    n = x.shape[0]
    bf16 = precision == "bfloat16" and distance == "cosine"
    protos = prototype_major(prototypes.to(torch.bfloat16 if bf16 else x.dtype))
    step = chunk_size if 0 < chunk_size < n else max(n, 1)
    chunks = [x[s : s + step] for s in range(0, max(n, 1), step)]
    with matmul_precision(precision):
        if distance == "cosine":  # (C, n_s) per chunk
            if bf16:
                parts = [_bf16_mm(protos, chunk.bfloat16().t()).view(K, C, -1).amax(dim=0) for chunk in chunks]
            else:
                parts = [(protos @ chunk.t()).view(K, C, -1).amax(dim=0) for chunk in chunks]
            return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).t()
        parts = [
            pairwise_similarity(chunk, protos, distance, huber_delta).view(-1, K, C).amax(dim=1) for chunk in chunks
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _class_max(view: torch.Tensor, scores: torch.Tensor, best: torch.Tensor) -> None:
    """Maximum over K of a (n, K, C) view and its first argmax, into scores (n, C) and best (n, C).

    On CPU ``torch.max(dim=1)`` with indices does not vectorise over a non-innermost dimension (an
    ``amax`` does); for many classes the index is instead read from the equality with the maximum,
    in row blocks that stay in cache: weights K-1..0 on the K slices and a maximum over them give
    the first k attaining the maximum.
    """
    n, K, C = view.shape
    if view.is_cuda or C < _MIN_CLASSES_BLOCKED_ARGMAX or K > 255:
        # CUDA reduces over dim 1 well; on CPU the blocked form pays off from ~50 classes on
        # (lab/BENCHMARKS.md). (The blocked form's uint8 weights need K <= 255.)
        torch.max(view, dim=1, out=(scores, best))
        return
    torch.amax(view, dim=1, out=scores)
    weights = torch.arange(K - 1, -1, -1, dtype=torch.uint8, device=view.device)[None, :, None]
    rows = max(1, _ARGMAX_BLOCK_ELEMENTS // (K * C))
    for s in range(0, n, rows):
        hit = torch.eq(view[s : s + rows], scores[s : s + rows, None, :]).view(torch.uint8).mul_(weights)
        best[s : s + rows] = (K - 1) - hit.amax(dim=1).long()


class _FusedCosineScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, protos, labels, num_classes: int, temperature: float, chunk_size: int, precision: str):
        """x (N, D); protos (K*C, D) prototype-major; labels (N,) in [0, C). Returns scores (N, C),
        own (N, K) (own-class similarities, k order), lse (N,). ``precision``: of the products."""
        n, kc = x.shape[0], protos.shape[0]
        C, K = num_classes, kc // num_classes
        step = chunk_size if chunk_size > 0 else max(n, 1)
        scores = x.new_empty(n, C)
        best = torch.empty(n, C, dtype=torch.long, device=x.device)
        row_max, row_sum, own = x.new_empty(n), x.new_empty(n), x.new_empty(n, K)
        own_columns = labels[:, None] + C * torch.arange(K, device=x.device)  # (N, K)
        kept = None
        protos_bf16 = protos.bfloat16() if precision == "bfloat16" else None
        for s in range(0, n, step):
            e = min(s + step, n)
            with matmul_precision(precision):
                logits = _product(x[s:e], protos, protos_bf16)  # (n_s, K*C)
            _class_max(logits.view(-1, K, C), scores[s:e], best[s:e])
            torch.gather(logits, 1, own_columns[s:e], out=own[s:e])
            torch.amax(scores[s:e], dim=1, out=row_max[s:e])
            _shifted_exp_(logits, row_max[s:e], temperature)
            torch.sum(logits, dim=1, out=row_sum[s:e])
            kept = logits if step >= n else None
        lse = row_max / temperature + row_sum.log()
        ctx.save_for_backward(x, protos, own_columns, best, row_max, row_sum)
        ctx.num_classes, ctx.temperature, ctx.step, ctx.precision = num_classes, temperature, step, precision
        # Not a saved tensor: the first backward consumes it in place (a second one recomputes).
        ctx.kept = kept
        return scores, own, lse

    @staticmethod
    def backward(ctx, grad_scores, grad_own, grad_lse):
        x, protos, own_columns, best, row_max, row_sum = ctx.saved_tensors
        n, C, tau = x.shape[0], ctx.num_classes, ctx.temperature
        K = protos.shape[0] // C
        grad_x = torch.empty_like(x)
        # d lse_i / d S_ij = softmax_j(S_i / tau) / tau = exp((S_ij - m_i) / tau) / (row_sum_i * tau)
        coef = grad_lse / (row_sum * tau)
        protos_bf16 = protos.bfloat16() if ctx.precision == "bfloat16" else None
        for s in range(0, n, ctx.step):
            e = min(s + ctx.step, n)
            with matmul_precision(ctx.precision):
                if ctx.kept is not None:
                    grad, ctx.kept = ctx.kept, None  # exp((S - m) / tau) from the forward
                else:
                    grad = _shifted_exp_(_product(x[s:e], protos, protos_bf16), row_max[s:e], tau)
                grad.mul_(coef[s:e, None])
                grad.view(e - s, K, C).scatter_add_(1, best[s:e, None, :], grad_scores[s:e, None, :])
                grad.scatter_add_(1, own_columns[s:e], grad_own[s:e])
                if protos_bf16 is None:
                    torch.mm(grad, protos, out=grad_x[s:e])
                else:
                    grad_x[s:e] = _bf16_mm(grad.bfloat16(), protos_bf16)
        return grad_x, None, None, None, None, None, None


def _shifted_exp_(logits: torch.Tensor, row_max: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits (n, M) <- exp((logits - row_max[:, None]) / temperature), in place, two passes."""
    torch.add(row_max[:, None] * (-1.0 / temperature), logits, alpha=1.0 / temperature, out=logits)
    return logits.exp_()


def prototype_scores(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    distance: str = "cosine",
    huber_delta: float = 0.1,
    chunk_size: int = 0,
    precision: str = "float32",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class scores, own-class similarities and PPC log-sum-exp of pixel embeddings.

    Args:
        x: (N, D) pixel embeddings (unit vectors for cosine). prototypes: (C, K, D), no gradient.
        labels: (N,) int64; entries outside [0, C) (ignored pixels) get meaningless own-class rows.
        temperature: tau of PPC. chunk_size: 0 keeps one (N, C*K) matrix for the backward; > 0
            bounds memory to chunk_size x C*K (cosine only).
        precision: one of :data:`SIMILARITY_PRECISIONS`, of the cosine products (forward and the
            gradient of x); everything else stays float32.
    Returns:
        class_scores (N, C) = max_k S[i, c, k]; own (N, K) = S[i, label_i, :];
        lse (N,) = logsumexp_j(S[i, j] / tau). All float32, differentiable with respect to x.
    """
    check_precision(precision)
    C, K, D = prototypes.shape
    labels = labels.clamp(0, C - 1)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        if distance == "cosine":
            # a copy (prototype_major): the backward needs these prototypes, and the memory update
            # writes the buffer in place
            return _FusedCosineScores.apply(
                x, prototype_major(prototypes.float()), labels, C, temperature, chunk_size, precision
            )
        flat = prototypes.reshape(C * K, D).float().clone()
        with matmul_precision(precision):
            logits = pairwise_similarity(x, flat, distance, huber_delta)  # (N, C*K)
        own = own_class_similarities(logits, labels, C)
        scores = class_maxima(logits, C)
        return scores, own, torch.logsumexp(logits / temperature, dim=1)

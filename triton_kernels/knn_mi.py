"""Triton kernels of ``latentquant::knn_mi_cd`` / ``knn_mi_cc`` (k-NN mutual information), batched over all pairs.

Every kernel works on a batch of P independent problems (one per (latent, source) pair) laid out as
(P, N[, DT]) float64 and computes the same distances, with the same rounding, as the C++ kernel and the
oracle in ``latentquant.reference.knn_mi`` (launch with ``enable_fp_fusion=False``, so no multiply-add is
fused: a fused ``a*a + s`` rounds differently).

- ``_knn_mi_cd_scalar_radius_fwd_kernel``: scalar latents. Points sorted by label, then value; the k-th
  same-label neighbour is the k-th smallest of the k candidates on either side (or, for the label classes
  scikit-learn searches by brute force, the k-th smallest ``(a^2 + (-2ab)) + b^2``).
- ``_knn_mi_scalar_count_fwd_kernel``: number of points within a squared radius of each point of a sorted
  array: two binary searches on the monotone squared distance.
- ``_knn_radius_fwd_kernel``: tiled brute force k-th nearest neighbour (squared Euclidean or max-norm) of
  each point among a contiguous candidate range, keeping the k best per row in registers.
- ``_knn_count_fwd_kernel``: tiled brute force count of points within a radius (a subset of dimensions).

``knn_mi_cd_triton`` / ``knn_mi_cc_triton`` validate their arguments as the C++ kernels do (finite float64
data, shapes, k), prepare the layouts with torch ops (sorts, gathers) under the data's device, launch the
kernels (query blocks on grid axis 0, pairs on axis 1: see ``launch_grids``) and reduce the digamma sums in
float64; they are registered as the CUDA kernels of the ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from latentquant.triton_kernels._common import device_guard

_SQ_EUCLID = 0
_CHEBYSHEV = 1


@triton.jit
def _knn_mi_cd_scalar_radius_fwd_kernel(
    run_ptr,
    start_ptr,
    cnt_ptr,
    out_ptr,
    N,
    pair0,
    K: tl.constexpr,
    BRUTE_W: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pair = pair0 + tl.program_id(1)
    q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    base = pair.to(tl.int64) * N
    live = q < N
    v = tl.load(run_ptr + base + q, mask=live, other=0.0)
    start = tl.load(start_ptr + base + q, mask=live, other=0)
    cnt = tl.load(cnt_ptr + base + q, mask=live, other=1)
    end = start + cnt
    k = tl.minimum(cnt - 1, K)
    valid = live & (cnt > 1)
    inf = float("inf")
    # Sorted run: merge the candidates on both sides, k steps.
    a = q - 1
    b = q + 1
    kth = tl.zeros([BLOCK], dtype=tl.float64)
    for i in range(K):
        va = tl.load(run_ptr + base + a, mask=valid & (a >= start), other=0.0)
        vb = tl.load(run_ptr + base + b, mask=valid & (b < end), other=0.0)
        da = tl.where(a >= start, (v - va) * (v - va), inf)
        db = tl.where(b < end, (v - vb) * (v - vb), inf)
        take_a = da <= db
        step = i < k
        kth = tl.where(step, tl.where(take_a, da, db), kth)
        a = tl.where(step & take_a, a - 1, a)
        b = tl.where(step & (~take_a), b + 1, b)
    # Classes with k >= count // 2 (so count <= 2K + 1): k-th smallest of the brute-force expansion,
    # the smallest value with at least k values <= it.
    brute = valid & (k >= cnt // 2)
    if tl.max(brute.to(tl.int32), axis=0) > 0:
        sq_v = v * v
        best = tl.full([BLOCK], inf, dtype=tl.float64)
        for j in range(BRUTE_W):
            pj = start + j
            okj = brute & (j < cnt) & (pj != q)
            vj = tl.load(run_ptr + base + pj, mask=okj, other=0.0)
            sj = tl.maximum((sq_v + (-2.0 * (v * vj))) + vj * vj, 0.0)
            below = tl.zeros([BLOCK], dtype=tl.int32)
            for i in range(BRUTE_W):
                pi = start + i
                oki = brute & (i < cnt) & (pi != q)
                vi = tl.load(run_ptr + base + pi, mask=oki, other=0.0)
                si = tl.maximum((sq_v + (-2.0 * (v * vi))) + vi * vi, 0.0)
                below += (oki & (si <= sj)).to(tl.int32)
            best = tl.where(okj & (below >= k), tl.minimum(best, sj), best)
        kth = tl.where(brute, best, kth)
    tl.store(out_ptr + base + q, kth, mask=live)


@triton.jit
def _knn_mi_scalar_count_fwd_kernel(
    sorted_ptr, pos_ptr, r2_ptr, n_ptr, out_ptr, N, pair0, LOG_N: tl.constexpr, BLOCK: tl.constexpr
):
    pair = pair0 + tl.program_id(1)
    q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    base = pair.to(tl.int64) * N
    live = q < N
    g = tl.load(pos_ptr + base + q, mask=live, other=-1)
    r2 = tl.load(r2_ptr + base + q, mask=live, other=0.0)
    n = tl.load(n_ptr + pair)
    valid = live & (g >= 0)
    xq = tl.load(sorted_ptr + base + g, mask=valid, other=0.0)
    # Left edge: (lo, hi] with within(hi) true and lo outside or false.
    lo = tl.full([BLOCK], -1, dtype=tl.int64)
    hi = g.to(tl.int64)
    for _ in range(LOG_N):
        go = valid & (hi - lo > 1)
        mid = lo + (hi - lo) // 2
        vm = tl.load(sorted_ptr + base + mid, mask=go, other=0.0)
        inside = (xq - vm) * (xq - vm) <= r2
        hi = tl.where(go & inside, mid, hi)
        lo = tl.where(go & (~inside), mid, lo)
    left = hi
    lo = g.to(tl.int64)
    hi = tl.zeros([BLOCK], dtype=tl.int64) + n
    for _ in range(LOG_N):
        go = valid & (hi - lo > 1)
        mid = lo + (hi - lo) // 2
        vm = tl.load(sorted_ptr + base + mid, mask=go, other=0.0)
        inside = (xq - vm) * (xq - vm) <= r2
        lo = tl.where(go & inside, mid, lo)
        hi = tl.where(go & (~inside), mid, hi)
    tl.store(out_ptr + base + q, tl.where(valid, lo - left + 1, 0), mask=live)


@triton.jit
def _pair_distance(
    pts_ptr,
    qrow,
    prow,
    qmask,
    pmask,
    C0: tl.constexpr,
    C1: tl.constexpr,
    DT: tl.constexpr,
    METRIC: tl.constexpr,
    BQ: tl.constexpr,
    BP: tl.constexpr,
):
    acc = tl.zeros([BQ, BP], dtype=tl.float64)
    for c in range(C0, C1):
        a = tl.load(pts_ptr + qrow * DT + c, mask=qmask, other=0.0)
        b = tl.load(pts_ptr + prow * DT + c, mask=pmask, other=0.0)
        diff = a[:, None] - b[None, :]
        if METRIC == 0:
            acc = acc + diff * diff
        else:
            acc = tl.maximum(acc, tl.abs(diff))
    return acc


@triton.jit
def _knn_radius_fwd_kernel(
    pts_ptr,
    lo_ptr,
    hi_ptr,
    k_ptr,
    out_ptr,
    N,
    pair0,
    DT: tl.constexpr,
    METRIC: tl.constexpr,
    K_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pair = pair0 + tl.program_id(1)
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    base = pair.to(tl.int64) * N
    live = q < N
    lo = tl.load(lo_ptr + base + q, mask=live, other=0)
    hi = tl.load(hi_ptr + base + q, mask=live, other=0)
    k = tl.load(k_ptr + base + q, mask=live, other=0)
    inf = float("inf")
    cols = tl.arange(0, K_PAD)
    # The k best so far (unordered); columns >= k hold -inf and never leave.
    best = tl.where(cols[None, :] < k[:, None], inf, -inf) + tl.zeros([BLOCK_Q, K_PAD], dtype=tl.float64)
    span_lo = tl.min(tl.where(live, lo, N), axis=0)
    span_hi = tl.max(tl.where(live, hi, 0), axis=0)
    for p0 in range(span_lo, span_hi, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        ok = (
            (p[None, :] >= lo[:, None])
            & (p[None, :] < hi[:, None])
            & (p[None, :] != q[:, None])
            & live[:, None]
        )
        d = _pair_distance(pts_ptr, base + q, base + p, live, p < N, 0, DT, DT, METRIC, BLOCK_Q, BLOCK_P)
        d = tl.where(ok, d, inf)
        for _ in range(K_PAD):
            m = tl.min(d, axis=1)
            worst = tl.max(best, axis=1)
            at = tl.argmax(best, axis=1)
            best = tl.where((cols[None, :] == at[:, None]) & (m < worst)[:, None], m[:, None], best)
            first = tl.argmin(d, axis=1)
            d = tl.where(tl.arange(0, BLOCK_P)[None, :] == first[:, None], inf, d)
    tl.store(out_ptr + base + q, tl.max(best, axis=1), mask=live)


@triton.jit
def _knn_count_fwd_kernel(
    pts_ptr,
    thr_ptr,
    n_ptr,
    out_ptr,
    N,
    pair0,
    C0: tl.constexpr,
    C1: tl.constexpr,
    DT: tl.constexpr,
    METRIC: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pair = pair0 + tl.program_id(1)
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    base = pair.to(tl.int64) * N
    n = tl.load(n_ptr + pair)
    live = q < n
    thr = tl.load(thr_ptr + base + q, mask=live, other=0.0)
    count = tl.zeros([BLOCK_Q], dtype=tl.int64)
    for p0 in range(0, n, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        d = _pair_distance(pts_ptr, base + q, base + p, live, p < n, C0, C1, DT, METRIC, BLOCK_Q, BLOCK_P)
        within = (d <= thr[:, None]) & (p[None, :] < n) & live[:, None]
        count += tl.sum(within.to(tl.int64), axis=1)
    tl.store(out_ptr + base + q, count, mask=q < N)


_BLOCK = 128
_BLOCK_Q = 32
_BLOCK_P = 64


# Grid axes 1 and 2 hold at most 65,535 programs, axis 0 up to 2^31 - 1: query blocks go on axis 0
# (N up to 2^31 - 1 samples), pairs on axis 1, in launches of at most 65,535 pairs each.
MAX_GRID_Y = 65_535


def launch_grids(p: int, n: int, block: int) -> list[tuple[int, tuple[int, int]]]:
    """(first pair, grid) of each launch covering P pairs of N queries in blocks of ``block``."""
    return [(p0, (triton.cdiv(n, block), min(MAX_GRID_Y, p - p0))) for p0 in range(0, p, MAX_GRID_Y)]


def _knn_mi_cd_scalar_radius_fwd(
    run: torch.Tensor, start: torch.Tensor, cnt: torch.Tensor, k: int
) -> torch.Tensor:
    """k-th smallest same-label squared distance of each point of sorted label runs.

    Shapes: run (P, N) float64 (sorted by label, then value), start (P, N) int64 (first position of the
    point's label run), cnt (P, N) int64 (its length) -> (P, N) float64.
    """
    p, n = run.shape
    out = torch.empty_like(run)
    for pair0, grid in launch_grids(p, n, _BLOCK):
        _knn_mi_cd_scalar_radius_fwd_kernel[grid](
            run, start, cnt, out, n, pair0, K=k, BRUTE_W=2 * k + 1, BLOCK=_BLOCK, enable_fp_fusion=False
        )
    return out


def _knn_mi_scalar_count_fwd(
    sorted_vals: torch.Tensor, pos: torch.Tensor, r2: torch.Tensor, n_valid: torch.Tensor
) -> torch.Tensor:
    """Number of points p < n_valid with ``(v[pos] - v[p])^2 <= r2`` in each sorted row, the point itself included.

    Shapes: sorted_vals (P, N) float64 (first n_valid[i] entries sorted), pos (P, N) int64 (position of
    each query in sorted_vals, -1 to skip), r2 (P, N) float64, n_valid (P,) int64 -> (P, N) int64.
    """
    p, n = sorted_vals.shape
    out = torch.empty(p, n, dtype=torch.int64, device=sorted_vals.device)
    for pair0, grid in launch_grids(p, n, _BLOCK):
        _knn_mi_scalar_count_fwd_kernel[grid](
            sorted_vals,
            pos,
            r2,
            n_valid,
            out,
            n,
            pair0,
            LOG_N=max(1, math.ceil(math.log2(n + 1))),
            BLOCK=_BLOCK,
            enable_fp_fusion=False,
        )
    return out


def _knn_radius_fwd(
    pts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, k: torch.Tensor, k_max: int, metric: int
) -> torch.Tensor:
    """k-th smallest distance from each point to the points of its range [lo, hi), itself left out.

    Shapes: pts (P, N, DT) float64, lo/hi/k (P, N) int64 with k <= k_max -> (P, N) float64 (squared
    Euclidean or max-norm distance, per ``metric``).
    """
    p, n, dt = pts.shape
    out = torch.empty(p, n, dtype=torch.float64, device=pts.device)
    for pair0, grid in launch_grids(p, n, _BLOCK_Q):
        _knn_radius_fwd_kernel[grid](
            pts,
            lo,
            hi,
            k,
            out,
            n,
            pair0,
            DT=dt,
            METRIC=metric,
            K_PAD=triton.next_power_of_2(k_max),
            BLOCK_Q=_BLOCK_Q,
            BLOCK_P=_BLOCK_P,
            enable_fp_fusion=False,
        )
    return out


def _knn_count_fwd(
    pts: torch.Tensor, thr: torch.Tensor, n_valid: torch.Tensor, c0: int, c1: int, metric: int
) -> torch.Tensor:
    """Number of points p < n_valid within ``thr`` of each point q < n_valid over dimensions [c0, c1).

    Shapes: pts (P, N, DT) float64, thr (P, N) float64, n_valid (P,) int64 -> (P, N) int64 (0 past n_valid).
    """
    p, n, dt = pts.shape
    out = torch.zeros(p, n, dtype=torch.int64, device=pts.device)
    for pair0, grid in launch_grids(p, n, _BLOCK_Q):
        _knn_count_fwd_kernel[grid](
            pts,
            thr,
            n_valid,
            out,
            n,
            pair0,
            C0=c0,
            C1=c1,
            DT=dt,
            METRIC=metric,
            BLOCK_Q=_BLOCK_Q,
            BLOCK_P=_BLOCK_P,
            enable_fp_fusion=False,
        )
    return out


def _encode(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of (N, S) labels: codes (S, N) in label order and the size of each sample's class (S, N)."""
    codes, sizes = [], []
    for j in range(y.shape[1]):
        _, inv, counts = torch.unique(y[:, j], return_inverse=True, return_counts=True)
        codes.append(inv)
        sizes.append(counts[inv])
    return torch.stack(codes), torch.stack(sizes)


def _run_starts(sorted_codes: torch.Tensor) -> torch.Tensor:
    """First position of each entry's run of equal codes along the last dimension."""
    idx = torch.arange(sorted_codes.shape[-1], device=sorted_codes.device).expand_as(sorted_codes)
    new = torch.ones_like(sorted_codes, dtype=torch.bool)
    new[..., 1:] = sorted_codes[..., 1:] != sorted_codes[..., :-1]
    return torch.where(new, idx, torch.zeros_like(idx)).cummax(dim=-1).values


def _finish_cd(k_eff: torch.Tensor, size: torch.Tensor, m: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """psi(N) + <psi(k)> - <psi(N_label)> - <psi(m)> over the valid points of each row, clipped at 0."""
    n = valid.sum(-1)
    zero = torch.zeros((), dtype=torch.float64, device=m.device)
    terms = torch.where(
        valid, torch.digamma(k_eff.double()) - torch.digamma(size.double()) - torch.digamma(m.double()), zero
    )
    mi = torch.digamma(n.double()) + terms.sum(-1) / n.clamp_min(1)
    return torch.where(n > 0, mi, zero).clamp_min(0.0)


def check_knn_inputs(op: str, x: torch.Tensor, y: torch.Tensor, n_neighbors: int) -> None:
    """The checks of the C++ kernels (csrc/cpu/knn_mi.cpp), same messages: x (N, L, Dx) float64, y (N, S)
    int64 labels (knn_mi_cd) or (N, S, Dy) float64 (knn_mi_cc), finite, one device, 1 <= k <= N - 1."""
    cd = op == "knn_mi_cd"
    if x.dim() != 3:
        raise ValueError(f"{op}: x must have 3 dimensions, got shape {tuple(x.shape)}")
    if x.dtype != torch.float64:
        raise ValueError(f"{op}: x must be float64, got {x.dtype}")
    if y.dim() != (2 if cd else 3):
        raise ValueError(f"{op}: y must have {2 if cd else 3} dimensions, got shape {tuple(y.shape)}")
    if y.dtype != (torch.int64 if cd else torch.float64):
        raise ValueError(f"{op}: y must be {'int64 labels' if cd else 'float64'}, got {y.dtype}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{op}: x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] >= 2**31:
        raise ValueError(f"{op}: at most 2^31 - 1 samples, got {x.shape[0]}")
    if not 1 <= n_neighbors < x.shape[0]:
        raise ValueError(
            f"{op}: n_neighbors must be in [1, N - 1] for N = {x.shape[0]} samples, got {n_neighbors}"
        )
    if x.device != y.device:
        raise ValueError(f"{op}: x is on {x.device} but y is on {y.device}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{op}: x contains NaN or Inf")
    if not cd and not bool(torch.isfinite(y).all()):
        raise ValueError(f"{op}: y contains NaN or Inf")


def knn_mi_cd_triton(x: torch.Tensor, y: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """Ross (2014) MI of every (latent, source) pair on the GPU. Shapes: x (N, L, D) float64, y (N, S) int64 -> (L, S)."""
    return _every_pair("knn_mi_cd", _knn_mi_cd, x, y, n_neighbors)


def knn_mi_cc_triton(x: torch.Tensor, y: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """KSG-1 (max-norm) MI of every pair on the GPU. Shapes: x (N, L, Dx), y (N, S, Dy) float64 -> (L, S)."""
    return _every_pair("knn_mi_cc", _knn_mi_cc, x, y, n_neighbors)


def _every_pair(
    op: str,
    estimate: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    n_neighbors: int,
) -> torch.Tensor:
    """Checks ``op``'s inputs, then ``estimate(x, y, n_neighbors)`` on contiguous copies under x's device:
    (L, S) estimates; an empty (L, S) result when there are no latents or no sources."""
    check_knn_inputs(op, x, y, n_neighbors)
    if x.shape[1] == 0 or y.shape[1] == 0:
        return x.new_empty((x.shape[1], y.shape[1]))
    with device_guard(x):
        return estimate(x.contiguous(), y.contiguous(), n_neighbors)


def _knn_mi_cd(x: torch.Tensor, y: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    n, lat, dim = x.shape
    src = y.shape[1]
    codes, sizes = _encode(y)  # (S, N)
    if dim == 1:
        xs, perm = torch.sort(x[:, :, 0].T, dim=1, stable=True)  # (L, N)
        ls = (lat, src, n)
        perm3 = perm[:, None, :].expand(ls)
        lab = codes[None].expand(ls).gather(2, perm3)  # labels in value order
        kept = sizes[None].expand(ls).gather(2, perm3) > 1
        by_label = torch.argsort(lab, dim=2, stable=True)
        run = xs[:, None, :].expand(ls).gather(2, by_label)
        run_lab = lab.gather(2, by_label)
        size = sizes[None].expand(ls).gather(2, perm3.gather(2, by_label))
        k_eff = (size - 1).clamp(min=0, max=n_neighbors)
        kth = _knn_mi_cd_scalar_radius_fwd(
            run.reshape(-1, n), _run_starts(run_lab).reshape(-1, n), size.reshape(-1, n), n_neighbors
        )
        r = torch.nextafter(torch.sqrt(kth), torch.zeros_like(kth))
        # Non-singleton points, in value order, first in each row.
        kept_order = torch.argsort((~kept).to(torch.int8), dim=2, stable=True)
        kept_vals = xs[:, None, :].expand(ls).gather(2, kept_order)
        kept_pos = torch.where(kept, kept.cumsum(2) - 1, -1).gather(2, by_label)
        m = _knn_mi_scalar_count_fwd(
            kept_vals.reshape(-1, n), kept_pos.reshape(-1, n), (r * r).reshape(-1, n), kept.sum(2).reshape(-1)
        )
        valid = size > 1
        return _finish_cd(k_eff, size, m.reshape(ls), valid)
    pairs = lat * src
    # Per pair: non-singleton points first, grouped by label.
    key = torch.where(sizes > 1, codes, codes.max() + 1)  # (S, N)
    order = torch.argsort(key, dim=1, stable=True)  # (S, N)
    pts = (
        x.permute(1, 0, 2)[:, None]
        .expand(lat, src, n, dim)
        .gather(2, order[None, :, :, None].expand(lat, src, n, dim))
    )
    size = sizes.gather(1, order)[None].expand(lat, src, n)
    starts = _run_starts(key.gather(1, order))[None].expand(lat, src, n)
    valid = size > 1
    k_eff = (size - 1).clamp(min=0, max=n_neighbors)
    pts = pts.reshape(pairs, n, dim).contiguous()
    lo = starts.reshape(pairs, n).contiguous()
    hi = torch.where(valid, starts + size, starts).reshape(pairs, n).contiguous()
    kth = _knn_radius_fwd(pts, lo, hi, k_eff.reshape(pairs, n).contiguous(), n_neighbors, _SQ_EUCLID)
    r = torch.nextafter(torch.sqrt(kth), torch.zeros_like(kth))
    m = _knn_count_fwd(pts, r * r, valid.reshape(pairs, n).sum(1), 0, dim, _SQ_EUCLID)
    return _finish_cd(k_eff, size, m.reshape(lat, src, n), valid)


def _knn_mi_cc(x: torch.Tensor, y: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    n, lat, dx = x.shape
    src, dy = y.shape[1], y.shape[2]
    pairs = lat * src
    xa = x.permute(1, 0, 2)[:, None].expand(lat, src, n, dx)
    ya = y.permute(1, 0, 2)[None].expand(lat, src, n, dy)
    pts = torch.cat([xa, ya], dim=3).reshape(pairs, n, dx + dy).contiguous()
    idx = torch.zeros(pairs, n, dtype=torch.int64, device=x.device)
    kth = _knn_radius_fwd(pts, idx, idx + n, idx + n_neighbors, n_neighbors, _CHEBYSHEV)
    r = torch.nextafter(kth, torch.zeros_like(kth))
    n_all = torch.full((pairs,), n, dtype=torch.int64, device=x.device)
    nx = _knn_count_fwd(pts, r, n_all, 0, dx, _CHEBYSHEV)
    ny = _knn_count_fwd(pts, r, n_all, dx, dx + dy, _CHEBYSHEV)
    psi = torch.digamma
    mi = psi(torch.tensor(float(n), dtype=torch.float64)) + psi(
        torch.tensor(float(n_neighbors), dtype=torch.float64)
    )
    mi = mi.to(x.device) - (psi(nx.double()).sum(1) + psi(ny.double()).sum(1)) / n
    return mi.clamp_min(0.0).reshape(lat, src)


KERNELS = {"knn_mi_cd": knn_mi_cd_triton, "knn_mi_cc": knn_mi_cc_triton}

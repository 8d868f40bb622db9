"""The asymmetric least-squares refit of one Ghost conv, from streamed Gram matrices.

Model. The conv's input ``x`` (from the network already converted up to it) gives, at output position ``p``,
the patch vector ``P(p)`` (the ``D = C_in * kh * kw`` values its filters see, plus a constant 1 when the conv
has a bias). Intrinsic map ``k`` is ``z_k(p) = W_k . P(p)``; ghost ``j`` made from it is the zero-padded
``d x d`` cheap conv of ``z_k``: ``g_j(p) = sum_t K_j[t] z_k(p + t - r) + c_j``, with ``r = d // 2``. Since the
primary conv is linear, ``g_j(p) = W_k . sum_t K_j[t] v_t(p) + c_j`` where ``v_t(p) = P(p + t - r)`` (zero
where ``p + t - r`` leaves the output grid). So everything is linear in the stacked vector
``V(p) = [v_t(p)]_t`` (``q = d^2`` blocks of ``D``), and both halves are closed-form least squares from the
Gram matrix ``sum_p V V^T``, the sums ``sum_p V`` and the cross products ``sum_p V y^T`` with the *original*
network's output ``y``:

* cheap kernels (``W`` fixed): ghost ``j`` regresses ``y_j`` on ``u_t = W_k . v_t`` (with intercept ``c_j``);
* primary filters (``K`` fixed): filter ``k`` minimises, over its stacked targets,
  ``w_a |y_a - W_k . v_0|^2 + sum_j w_j |y_j - W_k . sum_t K_j[t] v_t - c_j|^2`` (``a``: the intrinsic
  channel, ``v_0`` the centre block; the intrinsic map has no intercept beyond the conv's own bias).

Errors are in post-BN units (channel weights ``w = gamma^2 / (var + eps)`` of the following BN, else 1). The
ridge is relative: ``lam = ridge * trace(A) / dim`` for each normal matrix ``A``. It pulls toward zero, or,
once :meth:`GhostFit.anchor` has been called, toward the anchored values (``min |t - X w|^2 + lam |w - w0|^2``):
input directions the calibration data do not cover then keep the starting (pretrained) response.
Positions: a seeded subset of the output grid per image (the same for every layer's input and target). The
Gram is accumulated over batches in float32 blocks into float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GhostFit", "Moments", "gather_patches", "sample_positions"]


def sample_positions(h: int, w: int, k: int, seed: int, layer: int, image: int) -> torch.Tensor:
    """``k`` distinct positions (flat indices into ``h x w``; all of them, sorted, when ``k >= h * w``) for
    one image of one layer, fixed by ``(seed, layer, image)``."""
    if k >= h * w:
        return torch.arange(h * w)
    rng = np.random.default_rng([seed, layer, image])
    return torch.as_tensor(np.sort(rng.choice(h * w, size=k, replace=False)))


def gather_patches(conv: nn.Conv2d, x: torch.Tensor, pos: torch.Tensor, d: int) -> torch.Tensor:
    """``V`` at the given positions: ``x`` (B x C_in x H x W), ``pos`` (B x k flat indices into the conv's
    output grid) -> float32 (B * k, d^2, D) with ``D = C_in * kh * kw`` (+1 for a bias), in the conv weight's
    ``(c, u, v)`` order and the cheap conv's tap order ``t = a * d + b``."""
    b, cin = x.shape[:2]
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x.float(), conv._reversed_padding_repeated_twice, mode=mode)
    hz = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wz = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    r = d // 2
    taps = torch.arange(d) - r
    ph, pw = (pos // wz)[:, :, None] + taps, (pos % wz)[:, :, None] + taps  # B x k x d
    vh, vw = (ph >= 0) & (ph < hz), (pw >= 0) & (pw < wz)
    rows = ph.clamp(0, hz - 1)[:, :, :, None, None, None] * sh + (torch.arange(kh) * dh)[:, None]  # B,k,d,1,kh,1
    cols = pw.clamp(0, wz - 1)[:, :, None, :, None, None] * sw + (torch.arange(kw) * dw)  # B,k,1,d,1,kw
    bi = torch.arange(b)[:, None, None, None, None, None]
    patch = xp.permute(0, 2, 3, 1)[bi, rows, cols]  # B,k,d,d,kh,kw,C
    valid = (vh[:, :, :, None] & vw[:, :, None, :]).to(patch.dtype)  # B,k,d,d
    patch = patch.permute(0, 1, 2, 3, 6, 4, 5).reshape(b * pos.shape[1], d * d, cin * kh * kw)
    patch = patch * valid.reshape(-1, d * d, 1)
    if conv.bias is not None:
        patch = torch.cat([patch, valid.reshape(-1, d * d, 1)], dim=2)
    return patch


@dataclass
class Moments:
    """Streamed sums over the fit positions: ``gram`` (q D x q D, float64, tap-major), ``sv`` (q D), ``cross``
    (q D x C), ``sy`` and ``syy`` (C) and the count ``m``."""

    q: int
    dim: int
    channels: int
    gram: torch.Tensor = field(init=False)
    sv: torch.Tensor = field(init=False)
    cross: torch.Tensor = field(init=False)
    sy: torch.Tensor = field(init=False)
    syy: torch.Tensor = field(init=False)
    m: int = 0

    def __post_init__(self) -> None:
        n, c, f64 = self.q * self.dim, self.channels, torch.float64
        self.gram, self.sv = torch.zeros(n, n, dtype=f64), torch.zeros(n, dtype=f64)
        self.cross, self.sy, self.syy = torch.zeros(n, c, dtype=f64), torch.zeros(c, dtype=f64), torch.zeros(c, dtype=f64)

    def add(self, v: torch.Tensor, y: torch.Tensor, block: int = 1024) -> None:
        """Add positions: ``v`` (N, q, D) and targets ``y`` (N, C)."""
        flat = v.reshape(v.shape[0], -1).float()
        y = y.float()
        for i in range(0, flat.shape[0], block):
            vb, yb = flat[i:i + block], y[i:i + block]
            self.gram += (vb.T @ vb).double()
            self.cross += (vb.T @ yb).double()
            self.sv += vb.double().sum(0)
            self.sy += yb.double().sum(0)
            self.syy += (yb.double() ** 2).sum(0)
        self.m += int(flat.shape[0])
        self._perm = None

    def permuted(self) -> torch.Tensor:
        """The Gram as (D*D, q*q), blocks ``[A, B]`` with taps ``(t, u)`` last (cached until the next ``add``)."""
        if getattr(self, "_perm", None) is None:
            q, dim = self.q, self.dim
            self._perm = self.gram.view(q, dim, q, dim).permute(1, 3, 0, 2).reshape(dim * dim, q * q)
        return self._perm


#: With ``ridge=0``, eigenvalues of a Gram below this fraction of its largest are taken as 0: the Gram blocks are
#: accumulated in float32 (relative rounding about 1e-7 per product), so smaller ones are rounding, not data.
_PINV_RTOL = 1e-6


def _ridge_solve(a: torch.Tensor, b: torch.Tensor, ridge: float, x0: torch.Tensor | None = None,
                 pinv_rtol: float | None = _PINV_RTOL) -> torch.Tensor:
    """Solve ``(A + lam I) x = b + lam x0`` for batches of SPD ``A`` (..., n, n), ``lam = ridge * trace(A) / n``:
    the ridge pulls ``x`` toward ``x0`` (shaped like ``b``; zero when omitted). ``ridge=0``: the least-squares
    solution nearest ``x0``, ``x0 + pinv(A) (b - A x0)`` (what the dual form gives on rank-deficient data), with
    eigenvalues below ``pinv_rtol`` of the largest taken as 0 (None: torch's float64 default, for a Gram summed in
    float64)."""
    if ridge == 0:
        step = b if x0 is None else b - a @ x0
        x = torch.linalg.pinv(a, rtol=pinv_rtol, hermitian=True) @ step
        return x if x0 is None else x + x0
    n = a.shape[-1]
    tr = torch.diagonal(a, dim1=-2, dim2=-1).sum(-1).clamp_min(0)
    lam = ridge * tr / n
    lam = torch.where(lam > 0, lam, torch.full_like(lam, 1e-12))
    eye = torch.eye(n, dtype=a.dtype)
    reg = a + lam[..., None, None] * eye
    if x0 is not None:
        b = b + lam[..., None, None] * x0
    chol, info = torch.linalg.cholesky_ex(reg)
    if bool((info == 0).all()):
        return torch.cholesky_solve(b, chol)
    return torch.linalg.solve(reg, b)  # numerically singular (a tiny ridge): LU with pivoting


@dataclass
class GhostFit:
    """Fitted halves of one Ghost conv in original-channel terms: ``intrinsic`` (m channels, primary order),
    ``source`` (the primary index each ghost is made from, for ghosts ``ghosts``), ``weight`` (m x D incl. a
    bias column when the conv has one), ``kernel`` (G x q), ``bias`` (G); ``weight0``/``kernel0``: what the ridge
    pulls them toward (None: zero; set by :meth:`anchor`)."""

    intrinsic: list[int]
    ghosts: list[int]
    source: list[int]
    weight: torch.Tensor
    kernel: torch.Tensor
    bias: torch.Tensor
    weight0: torch.Tensor | None = None
    kernel0: torch.Tensor | None = None

    def anchor(self) -> None:
        """From now on, every refit's ridge pulls the filters and kernels toward their current values (the
        start: the pretrained intrinsic filters and the closed-form cheap kernels) instead of toward zero."""
        self.weight0, self.kernel0 = self.weight.clone(), self.kernel.clone()

    def cheap_step(self, mo: Moments, ridge: float) -> None:
        """Refit every cheap kernel and bias with the primary filters fixed (exact LS from the moments)."""
        q, dim, m = mo.q, mo.dim, mo.m
        src = torch.as_tensor(self.source)
        w = self.weight[src]  # G x D
        g4 = mo.gram.view(q, dim, q, dim)
        gw = torch.einsum("tAuB,gB->gtAu", g4, w)  # G x q x D x q
        gram_u = torch.einsum("gA,gtAu->gtu", w, gw)
        su = (mo.sv.view(q, dim) @ w.T).T  # G x q
        cross_u = torch.einsum("tAg,gA->gt", mo.cross.view(q, dim, -1)[:, :, self.ghosts], w)
        sy = mo.sy[self.ghosts]
        cov = gram_u - su[:, :, None] * su[:, None, :] / m
        cvec = cross_u - su * sy[:, None] / m
        k = _ridge_solve(cov, cvec[..., None], ridge, self._k0())[..., 0]
        self.kernel = k
        self.bias = (sy - (su * k).sum(1)) / m

    def primary_step(self, mo: Moments, weights: torch.Tensor, ridge: float, chunk: int = 16) -> None:
        """Refit every primary filter over its stacked targets (the intrinsic channel and its ghosts, post-BN
        weighted) with the cheap kernels fixed; the cheap biases follow (exact LS from the moments)."""
        q, dim, m = mo.q, mo.dim, mo.m
        ctr = q // 2
        g4 = mo.gram.view(q, dim, q, dim)
        sv = mo.sv.view(q, dim)
        cross = mo.cross.view(q, dim, -1)
        src = torch.as_tensor(self.source)
        gp = mo.permuted()  # (D*D, q*q): Gram blocks with the taps last
        fsum = self.kernel @ sv  # G x D: each ghost's summed features
        new = torch.empty_like(self.weight)
        for k0 in range(0, len(self.intrinsic), chunk):
            ks = torch.arange(k0, min(k0 + chunk, len(self.intrinsic)))
            a_ch = torch.as_tensor([self.intrinsic[int(k)] for k in ks])
            wa = weights[a_ch]
            lhs = wa[:, None, None] * g4[ctr, :, ctr, :][None]
            rhs = wa[:, None] * cross[ctr][:, a_ch].T
            gi = torch.nonzero(torch.isin(src, ks)).flatten()
            if len(gi):
                kk = self.kernel[gi]
                outer = (kk[:, :, None] * kk[:, None, :]).reshape(len(gi), q * q)
                cov = (gp @ outer.T).T.reshape(len(gi), dim, dim)
                cov -= fsum[gi][:, :, None] * fsum[gi][:, None, :] / m
                j = torch.as_tensor([self.ghosts[int(g)] for g in gi])
                c = torch.einsum("gt,tAg->gA", kk, cross[:, :, j]) - fsum[gi] * mo.sy[j][:, None] / m
                wj = weights[j]
                rows = src[gi] - k0
                lhs.index_add_(0, rows, wj[:, None, None] * cov)
                rhs.index_add_(0, rows, wj[:, None] * c)
            new[ks] = _ridge_solve(lhs, rhs[..., None], ridge, self._w0(ks))[..., 0]
        self.weight = new
        fs = torch.einsum("gt,tA->gA", self.kernel, sv)
        self.bias = (mo.sy[self.ghosts] - (fs * self.weight[src]).sum(1)) / m

    def cheap_step_direct(self, v: torch.Tensor, y: torch.Tensor, ridge: float) -> None:
        """:meth:`cheap_step` from the fit positions themselves (``v`` (M, q, D), ``y`` (M, C)): the same least
        squares, cheaper when M is small against q D."""
        v, y = v.double(), y.double()
        m = v.shape[0]
        u = torch.einsum("ntA,gA->gnt", v, self.weight[torch.as_tensor(self.source)])  # G x M x q
        yg = y[:, self.ghosts].T  # G x M
        uc, yc = u - u.mean(1, keepdim=True), yg - yg.mean(1, keepdim=True)
        cov = uc.transpose(1, 2) @ uc
        k = _ridge_solve(cov, (uc.transpose(1, 2) @ yc[..., None]), ridge, self._k0())[..., 0]
        self.kernel = k
        self.bias = (yg.sum(1) - (u.sum(1) * k).sum(1)) / m

    def primary_step_direct(self, v: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, ridge: float) -> None:
        """:meth:`primary_step` from the fit positions themselves: the stacked design ``X`` of each filter is
        built explicitly; with fewer rows than unknowns the dual form ``W = X^T (X X^T + lam I)^-1 t`` (the same
        ridge solution, cheap when M is small against D), or, anchored, ``W = W0 + X^T (X X^T + lam I)^-1
        (t - X W0)``."""
        v, y = v.double(), y.double()
        m, q, dim = v.shape
        src = torch.as_tensor(self.source)
        new = torch.empty_like(self.weight)
        for k, a in enumerate(self.intrinsic):
            rows, targets = [weights[a].sqrt() * v[:, q // 2]], [weights[a].sqrt() * y[:, a]]
            for gi in torch.nonzero(src == k).flatten().tolist():
                j = self.ghosts[gi]
                f = torch.einsum("ntA,t->nA", v, self.kernel[gi])
                rows.append(weights[j].sqrt() * (f - f.mean(0)))
                targets.append(weights[j].sqrt() * (y[:, j] - y[:, j].mean()))
            x, t = torch.cat(rows), torch.cat(targets)
            w0 = None if self.weight0 is None else self.weight0[k]
            if x.shape[0] >= dim:  # more rows than unknowns: the normal equations
                new[k] = _ridge_solve(x.T @ x, (x.T @ t)[:, None], ridge, None if w0 is None else w0[:, None])[:, 0]
                continue
            lam = ridge * float((x * x).sum()) / dim
            gram = x @ x.T + max(lam, 1e-12) * torch.eye(x.shape[0], dtype=x.dtype)
            if w0 is None:
                new[k] = x.T @ torch.linalg.solve(gram, t)
            else:  # the step from the anchor, fitted to what the anchor leaves unexplained
                new[k] = w0 + x.T @ torch.linalg.solve(gram, t - x @ w0)
        self.weight = new
        fs = torch.einsum("gt,ntA->gA", self.kernel, v)
        self.bias = (y[:, self.ghosts].sum(0) - (fs * self.weight[src]).sum(1)) / m

    def _k0(self) -> torch.Tensor | None:
        return None if self.kernel0 is None else self.kernel0[..., None]

    def _w0(self, ks: torch.Tensor) -> torch.Tensor | None:
        return None if self.weight0 is None else self.weight0[ks][..., None]

    def output_moments(self, mo: Moments, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (population) variance of every output channel over the fit positions, from the moments."""
        q, dim, m = mo.q, mo.dim, mo.m
        ctr = q // 2
        g4, sv = mo.gram.view(q, dim, q, dim), mo.sv.view(q, dim)
        mean, var = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
        w = self.weight
        s_c = w @ sv[ctr]
        mean[self.intrinsic] = s_c / m
        var[self.intrinsic] = (torch.einsum("kA,AB,kB->k", w, g4[ctr, :, ctr, :], w) - s_c * s_c / m) / m
        ws = w[torch.as_tensor(self.source)]
        gram_u = torch.einsum("gA,tAuB,gB->gtu", ws, g4, ws)
        su = (sv @ ws.T).T
        cov = gram_u - su[:, :, None] * su[:, None, :] / m
        mean[self.ghosts] = (su * self.kernel).sum(1) / m + self.bias
        var[self.ghosts] = torch.einsum("gt,gtu,gu->g", self.kernel, cov, self.kernel) / m
        return mean, var.clamp_min(0)

    def predict(self, v: torch.Tensor, channels: int) -> torch.Tensor:
        """All ``channels`` outputs at positions ``v`` (N, q, D), float64, original channel order."""
        q = v.shape[1]
        z = torch.einsum("ntA,kA->ntk", v.double(), self.weight)  # N x q x m
        out = torch.zeros(v.shape[0], channels, dtype=torch.float64)
        out[:, self.intrinsic] = z[:, q // 2]
        src = torch.as_tensor(self.source)
        out[:, self.ghosts] = torch.einsum("ntg,gt->ng", z[:, :, src], self.kernel) + self.bias
        return out

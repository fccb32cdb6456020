"""Iterative curvature for nets too large for a dense Hessian: Hessian-vector products, Lanczos for the
extreme eigenpairs, and stochastic Lanczos quadrature (SLQ) for the spectral density and for
tr f(H) (trace, N_eff, SANE) with standard errors.

Everything works on a matrix-free operator ``matvec(V) -> H V`` that takes a batch of vectors as rows,
(b, P) -> (b, P), so that SLQ's probes share one batched Hessian-vector product per Lanczos step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .curvature import MatVec, hvp_operator  # noqa: F401 (hvp_operator is part of this module's interface)


@dataclass
class LanczosResult:
    """Ritz pairs of the largest eigenvalues, and the extremes of the spectrum."""

    values: np.ndarray  # (k,) descending: the k largest eigenvalues
    vectors: np.ndarray  # (P, k) the matching eigenvectors as columns
    residuals: np.ndarray  # (k,) ||H v - theta v|| of each pair
    magnitudes: np.ndarray  # (k,) the k largest |eigenvalues|, descending
    lambda_min: float
    converged: bool
    iterations: int
    krylov: Krylov | None = None  # with ``keep_basis``: the whole Krylov basis, for deflating a trace


@dataclass
class Krylov:
    """A Lanczos run's orthonormal basis V (its m vectors, kept as rows) and tr(V^T H V), the sum of the
    run's alphas (each alpha_i = q_i^T H q_i).

    For the trace alone, tr H = tr V^T H V + tr (I - VV^T) H (I - VV^T) needs only V orthonormal, not
    converged eigenvectors: deflating by the whole basis is exact, and removes from the probes every
    direction Lanczos has explored (the top and bottom outliers first), at no further product."""

    rows: _Rows
    trace: float

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """V^T (V v) for each row of ``v`` (b, P): its component in the basis's span."""
        return self.rows.project(v)


def lanczos(
    matvec: MatVec,
    p: int,
    k: int,
    *,
    tol: float,
    max_iter: int = 300,
    seed: int = 0,
    values_only: bool = False,
    dtype=torch.float64,
    device="cpu",
    store=None,
    keep_basis: bool = False,
    store_device=None,
) -> LanczosResult:
    """Lanczos with full reorthogonalisation for the k largest eigenpairs (and the k largest magnitudes).

    Converged when every wanted Ritz pair has residual ||H v - theta v|| <= tol * |theta|_max (checked
    through the Lanczos identity, residual = |beta_m s_m|). Stops at ``max_iter`` steps or at P (the
    Krylov space is then the whole space and the Ritz values are exact) and says whether it converged. A
    negative ``tol`` never converges: the run takes ``max_iter`` steps or stops at an invariant subspace.

    ``values_only``: only the eigenvalues are wanted, so a pair also counts as converged when its
    eigenvalue error bound residual^2 / gap (gap: the distance to the nearest other Ritz value) is within
    ``tol * |theta|_max``; eigenvalues converge about twice as fast as eigenvectors.

    ``store``: the dtype the Lanczos vectors are kept in (default ``dtype``): float32 halves the memory of a
    float64 run, whose recurrence stays float64 (the reorthogonalisation against the kept vectors runs in
    float32); the vectors are then orthogonal to float32's rounding.

    ``keep_basis``: the result's ``krylov`` holds the run's m Lanczos vectors and tr(V^T H V), to deflate a
    Hutchinson trace (:func:`hutchinson`) by the whole Krylov space.

    ``store_device``: where the Lanczos vectors are kept (default ``device``): a GPU run's in the host's memory
    ("cpu") when the GPU's cannot hold them; the reorthogonalisation then reads them to the GPU a chunk at a time.
    """
    k = min(k, p)
    max_iter = min(max_iter, p)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(p, generator=gen, dtype=dtype).to(device)
    q /= q.norm()
    basis = _Rows(p, min(max_iter + 1, 2 * k + 32), max_iter + 1, dtype if store is None else store,
                  device if store_device is None else store_device)  # fmt: skip
    basis.append(q)
    alphas, betas = [], []
    converged = False
    for i in range(max_iter):
        w = matvec(q[None])[0]
        alphas.append(float(w @ q))
        for _ in range(2):  # twice is enough (Parlett's "twice is enough")
            w -= basis.project(w)
        beta = float(w.norm())
        betas.append(beta)
        m = i + 1
        if m >= k:  # the Ritz check costs O(m^2), far less than the Hessian-vector product
            theta, s = _ritz(alphas, betas[:-1])
            scale = max(abs(theta[0]), abs(theta[-1]), 1e-300)
            res = np.abs(beta * s[-1, :])
            if values_only and m > 1:
                gaps = np.abs(theta[:, None] - theta[None, :]) + np.diag(np.full(m, np.inf))
                res = np.minimum(res, res**2 / np.maximum(gaps.min(axis=1), 1e-300))
            top, mags = np.argsort(theta)[::-1][:k], np.argsort(np.abs(theta))[::-1][:k]
            wanted = np.union1d(top, mags)
            if beta < 1e-12 or np.all(res[wanted] <= tol * scale):
                converged = True
                break
        if beta < 1e-12:
            break
        q = w / beta
        basis.append(q)
    m = len(alphas)
    theta, s = _ritz(alphas, betas[: m - 1])
    res = np.abs(betas[m - 1] * s[-1, :])
    top = np.argsort(theta)[::-1][:k]
    vectors = basis.combine(torch.as_tensor(s[:, top], dtype=dtype, device=device)).double().cpu().numpy()
    mags = np.sort(np.abs(theta))[::-1][:k]
    krylov = None
    if keep_basis:
        basis.n = m  # the m vectors whose alphas were taken (a next one may have been appended)
        krylov = Krylov(basis, float(np.sum(alphas)))
    return LanczosResult(theta[top], vectors, res[top], mags, float(theta.min()), converged or m == p, m, krylov)


HUTCHINSON_BATCH = 16  # probes a Hessian-vector product call takes in hutchinson
CHUNK = 2**26  # elements of kept Lanczos vectors converted to another dtype or moved to the arithmetic's device at a
# time (512 MiB in float64)


class _Rows:
    """Lanczos's vectors as rows, kept in blocks that are added as it goes (the first of ``first`` rows, each next
    as many as there are, at most ``most`` in all), so that the kept rows are never copied into a larger
    tensor; in the dtype ``store`` on ``device`` (the arithmetic's, or the host's), converted to the arithmetic's
    dtype and device a chunk at a time where they differ."""

    def __init__(self, p: int, first: int, most: int, store, device):
        self.p, self.first, self.most, self.store, self.device = p, first, most, store, device
        self.blocks: list[torch.Tensor] = []
        self.n, self.room = 0, 0  # rows kept, rows the blocks hold

    def append(self, q: torch.Tensor) -> None:
        if self.n == self.room:
            size = min(self.room or self.first, self.most - self.room)
            self.blocks.append(torch.zeros(size, self.p, dtype=self.store, device=self.device))
            self.room += size
        self.blocks[-1][self.n - (self.room - len(self.blocks[-1]))] = q
        self.n += 1

    def _parts(self, dtype, n: int, device):
        """The first ``n`` kept rows, as (first row, a block of them in ``dtype`` on ``device``)."""
        start = 0
        for block in self.blocks:
            rows = block[: min(len(block), n - start)]
            if rows.dtype == dtype and rows.device == torch.device(device):
                yield start, rows
            else:
                step = max(1, CHUNK // max(1, self.p))
                for i in range(0, len(rows), step):
                    yield start + i, rows[i : i + step].to(device=device, dtype=dtype)
            start += len(rows)
            if start >= n:
                return

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """V^T (V w) for the kept rows V (orthonormal): the component of w (P,), or of each row of w (b, P), in
        their span, in w's dtype. Rows kept narrower are projected in their own dtype (w rounded to it): their
        directions are known to that rounding only, and the projection then reads them once, without a wider
        copy."""
        out = None
        narrow = w.to(self.store)
        for _, rows in self._parts(self.store, self.n, w.device):
            part = ((narrow @ rows.T) @ rows).to(w.dtype)
            out = part if out is None else out.add_(part)
            del rows, part  # one chunk held at a time while the next is read
        return out

    def combine(self, coef: torch.Tensor) -> torch.Tensor:
        """V^T coef, (P, k), for the first len(coef) kept rows V and coef (rows, k)."""
        out = torch.zeros(self.p, coef.shape[1], dtype=coef.dtype, device=coef.device)
        for start, rows in self._parts(coef.dtype, len(coef), coef.device):
            out += rows.T @ coef[start : start + len(rows)]
        return out


def _ritz(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the tridiagonal Lanczos matrix."""
    from scipy.linalg import eigh_tridiagonal

    return eigh_tridiagonal(np.array(alphas), np.array(betas))


def _gauss(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss rule of a Jacobi matrix (diagonal ``alphas``, off-diagonal ``betas``): nodes, weights."""
    theta, s = _ritz(alphas, betas)
    return theta, s[0, :] ** 2


def _averaged_gauss(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Laurie's averaged Gauss rule from the m x m Jacobi matrix: half the (m-1)-node Gauss rule plus half
    the m-node anti-Gauss rule (the last off-diagonal times sqrt 2), whose error is the Gauss rule's with its
    sign turned. Exact for polynomials of degree 2m - 1, like the m-node Gauss rule, but its error on a
    function with a kink inside the spectrum is several times smaller (see the SLQ bias study)."""
    g_nodes, g_weights = _gauss(alphas[:-1], betas[:-1])
    anti = betas.copy()
    anti[-1] *= np.sqrt(2.0)
    a_nodes, a_weights = _gauss(alphas, anti)
    return np.concatenate([g_nodes, a_nodes]), np.concatenate([g_weights, a_weights]) / 2


def _squared_rules(alphas: np.ndarray, betas: np.ndarray) -> tuple[tuple, tuple]:
    """The Gauss and the Gauss-Radau rule (a node fixed at 0) for the spectral measure of H^2 seen from the
    same probe, each with (m - 1) // 2 free nodes, from the m x m Jacobi matrix T of H: Lanczos on T^2 from
    e_1 reproduces the Jacobi matrix of H^2's measure while its moments are those of T's (degree <= 2m - 1
    in H). Returns ((nodes, weights), (nodes, weights)); nodes are eigenvalues of H^2, so >= 0."""
    m = len(alphas)
    j = (m - 1) // 2
    t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    t2 = t @ t
    basis = np.zeros((j + 1, m))
    basis[0, 0] = 1.0
    a, b = np.zeros(j), np.zeros(j)
    for i in range(j):
        w = t2 @ basis[i]
        a[i] = w @ basis[i]
        for _ in range(2):  # full reorthogonalisation: m is small
            w -= basis[: i + 1].T @ (basis[: i + 1] @ w)
        b[i] = np.linalg.norm(w)
        if b[i] <= 1e-14 * max(1.0, abs(a[i])):  # the measure has at most i + 1 points: Gauss is exact
            nodes, weights = _gauss(a[: i + 1], b[:i])
            return (nodes, weights), (nodes, weights)
        basis[i + 1] = w / b[i]
    gauss = _gauss(a, b[: j - 1])
    # Radau (Golub 1973): the (j+1)-th diagonal entry that makes 0 an eigenvalue, from (J_j - 0 I) d = b_j^2 e_j
    rhs = np.zeros(j)
    rhs[-1] = b[-1] ** 2
    jac = np.diag(a) + np.diag(b[: j - 1], 1) + np.diag(b[: j - 1], -1)
    d = np.linalg.solve(jac, rhs)
    radau = _gauss(np.append(a, d[-1]), b)
    return gauss, (np.clip(radau[0], 0.0, None), radau[1])


@dataclass
class Quadrature:
    """SLQ's quadrature: per probe, the Jacobi (Lanczos tridiagonal) matrix and its Gauss rule, Ritz values
    (nodes) and squared first components (weights); with deflation, also the eigenvalues whose eigenvectors
    were projected out of the probes."""

    nodes: np.ndarray  # (probes, steps) the Gauss rule: the spectral density's estimate
    weights: np.ndarray  # (probes, steps), each row sums to 1
    scales: np.ndarray  # (probes,) squared norm of each probe (P for a Rademacher one, less when projected)
    deflated: np.ndarray  # eigenvalues counted exactly (empty without deflation)
    alphas: np.ndarray  # (probes, steps) the Jacobi matrices' diagonals
    betas: np.ndarray  # (probes, steps - 1) and off-diagonals
    exhausted: bool = False  # every probe's Krylov space was exhausted: the Gauss rule is exact

    def _exact(self, f: Callable[[np.ndarray], np.ndarray]) -> float:
        return float(np.sum(f(self.deflated))) if len(self.deflated) else 0.0

    @cached_property
    def _averaged_rules(self) -> tuple[np.ndarray, np.ndarray]:
        """Per probe, the averaged Gauss rule's nodes and weights, (probes, 2m - 1) each."""
        rules = [_averaged_gauss(a, b) for a, b in zip(self.alphas, self.betas, strict=True)]
        return np.array([x for x, _ in rules]), np.array([w for _, w in rules])

    @cached_property
    def _squared(self) -> list[tuple[tuple, tuple]]:
        """Per probe, the Gauss and Gauss-Radau rules for H^2's measure (:func:`_squared_rules`)."""
        return [_squared_rules(a, b) for a, b in zip(self.alphas, self.betas, strict=True)]

    def trace_of(self, f: Callable[[np.ndarray], np.ndarray], rule: str = "averaged") -> tuple[float, float]:
        """(estimate, standard error) of tr f(H): the deflated eigenvalues' sum of f, plus the mean over
        probes v of |v|^2 times the quadrature of v^T f(H) v / |v|^2. The quadrature is the averaged Gauss
        rule (:func:`_averaged_gauss`), or with ``rule="gauss"`` (and always once every Krylov space is
        exhausted, where it is exact, or below 3 steps) the Gauss rule."""
        if rule == "averaged" and not self.exhausted and self.alphas.shape[1] >= 3:
            nodes, weights = self._averaged_rules
        else:
            nodes, weights = self.nodes, self.weights
        quad = np.sum(weights * f(nodes), axis=1)
        per_probe = self.scales * quad
        se = per_probe.std(ddof=1) / np.sqrt(len(per_probe)) if len(per_probe) > 1 else float("nan")
        return self._exact(f) + float(per_probe.mean()), float(se)

    def bracket_of(self, g: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
        """(lower, upper) bounds on the mean over probes of the exact v^T f(H) v with f(x) = g(|x|), plus the
        deflated eigenvalues' exact part, for g(|x|) = u(x^2) with u a Bernstein function of x^2 (u >= 0 with a
        completely monotone derivative: g(t) = t / (t + a), g(t) = t). On H^2's measure the even derivatives
        of u are <= 0 and the odd ones >= 0, so its Gauss rule overestimates and its Gauss-Radau rule with a
        node at 0 underestimates (Golub & Meurant, "Matrices, moments and quadrature", 1994). Bounds in exact
        arithmetic; with the Lanczos vectors kept orthogonal (full reorthogonalisation) they hold to rounding.
        The distance from an estimate to the far end bounds the estimate's quadrature error (its bias)."""
        if self.exhausted:  # the Gauss rule is exact
            est = self.trace_of(lambda t: g(np.abs(t)), rule="gauss")[0]
            return est, est
        if self.alphas.shape[1] < 3:  # too few moments for a rule on H^2's measure
            return float("nan"), float("nan")
        exact = self._exact(lambda t: g(np.abs(t)))
        lower, upper = np.zeros(len(self.scales)), np.zeros(len(self.scales))
        for i, ((gx, gw), (rx, rw)) in enumerate(self._squared):
            upper[i], lower[i] = np.sum(gw * g(np.sqrt(gx.clip(0.0)))), np.sum(rw * g(np.sqrt(rx)))
        return exact + float(np.mean(self.scales * lower)), exact + float(np.mean(self.scales * upper))


def _probes(
    p: int, probes: int, seed: int, dtype, device, deflate: tuple[np.ndarray, np.ndarray] | None
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None]:
    """(Rademacher probes (probes, P) with the span of the deflated eigenvectors projected out, the
    deflated eigenvalues (empty without deflation), the deflated eigenvectors (P, k) or None)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = (torch.randint(0, 2, (probes, p), generator=gen) * 2 - 1).to(dtype=dtype, device=device)
    if deflate is None:
        return v, np.zeros(0), None
    values, vectors = deflate
    d = None
    if vectors.shape[1]:
        d = torch.as_tensor(np.ascontiguousarray(vectors)).to(dtype=dtype, device=device)
        v -= (v @ d) @ d.T
    return v, np.asarray(values, dtype=float), d


def slq(
    matvec: MatVec,
    p: int,
    *,
    probes: int,
    steps: int,
    seed: int = 0,
    reorthogonalize: bool = True,
    deflate: tuple[np.ndarray, np.ndarray] | None = None,
    reproject: bool = True,
    dtype=torch.float64,
    device="cpu",
    group: int | None = None,
    store=None,
    store_device=None,
) -> Quadrature:
    """Stochastic Lanczos quadrature with Rademacher probes, run in lockstep (one batched Hessian-vector
    product per step). Reproducible for a given seed.

    With ``reorthogonalize`` each probe's Lanczos vectors are kept and reorthogonalised in full (memory
    steps x probes x P numbers); without, only the last two are kept: the quadrature stays accurate
    without reorthogonalisation (Knizhnerman 1996), and on large nets the reorthogonalisation's memory
    traffic costs as much as the Hessian-vector products.

    ``deflate = (eigenvalues, eigenvectors)`` (k,), (P, k) orthonormal columns, from :func:`lanczos`: the
    probes are projected onto the complement of the eigenvectors and the eigenvalues enter tr f(H)
    exactly. tr f(H) = tr V^T f(H) V + tr (I - VV^T) f(H) (I - VV^T) holds for any orthonormal V, and the
    projected probes estimate the second term without bias; when V holds the outlying eigenvectors, which
    carry most of the variance of v^T f(H) v, the standard errors shrink several-fold (Gambhir, Stathopoulos
    & Orginos 2017; the same idea as Hutch++). With ``reproject`` (and without full reorthogonalisation) the
    eigenvectors are projected out of every Lanczos vector too (k x P a step): rounding puts their
    directions back into the Krylov space, where Lanczos finds them at once and the quadrature would
    count the deflated eigenvalues a second time.

    Memory: ``group`` probes run at a time (default all: one batched product a step for them all), each group's
    Lanczos vectors kept in ``store`` (default ``dtype``; float32 halves a float64 run's, whose recurrence stays
    float64, the vectors then orthogonal to float32's rounding) on ``store_device`` (default ``device``; the host's
    memory, "cpu", for a GPU run whose GPU cannot hold them). The probes, their seeds and the result do not depend
    on the grouping or where the vectors are kept but for rounding.
    """
    steps = min(steps, p)
    v, values, d = _probes(p, probes, seed, dtype, device, deflate)
    scales = (v.norm(dim=1) ** 2).double().cpu().numpy()
    v /= v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)  # a probe inside span(V) stays 0
    kept = (store or dtype, store_device or device)
    runs = [_lanczos_lockstep(matvec, part, steps, reorthogonalize, reproject, d, *kept)
            for part in v.split(group or probes)]  # fmt: skip
    m = min(len(a) for a, _, _ in runs)  # every probe's rule of the same length: the shortest run's
    alphas = np.concatenate([a[:m].T for a, _, _ in runs])
    betas = np.concatenate([b[: m - 1].T for _, b, _ in runs])
    exhausted = steps == p or all(e for _, _, e in runs)
    nodes, weights = np.zeros((probes, m)), np.zeros((probes, m))
    for b in range(probes):
        nodes[b], weights[b] = _gauss(alphas[b], betas[b])
    return Quadrature(nodes, weights, scales, values, alphas, betas, exhausted=exhausted)


def _lanczos_lockstep(
    matvec: MatVec, v: torch.Tensor, steps: int, reorthogonalize: bool, reproject: bool, d, store, store_device
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Lanczos from the unit rows of ``v`` in lockstep, one batched product a step: (alphas (m, b), betas
    (m, b), whether every probe's Krylov space was exhausted); m < steps where a probe's space was exhausted."""
    probes, p = v.shape
    dtype, device = v.dtype, v.device
    kept = store_device if reorthogonalize else device  # the three-term recurrence's two vectors stay with the work
    basis = torch.zeros(steps if reorthogonalize else 2, probes, p, dtype=store, device=kept)
    basis[0] = v
    alphas = torch.zeros(steps, probes, dtype=torch.float64)
    betas = torch.zeros(steps, probes, dtype=torch.float64)
    m, exhausted, q, previous = steps, False, v, None
    for i in range(steps):
        w = matvec(q)
        alpha = (w * q).sum(1)
        alphas[i] = alpha.double().cpu()
        if reorthogonalize:
            for _ in range(2):
                w -= _project_each(basis[: i + 1], w)
        else:  # the three-term recurrence: w -= alpha_i q_i + beta_(i-1) q_(i-1)
            w -= alpha[:, None] * q
            if previous is not None:
                w -= betas[i - 1].to(device=device, dtype=dtype)[:, None] * previous
            if reproject and d is not None:  # keep the deflated directions out (see slq's docstring)
                w -= (w @ d) @ d.T
        norms = w.norm(dim=1)
        betas[i] = norms.double().cpu()
        if i + 1 < steps:
            if bool((norms < 1e-10).any()):  # an invariant subspace: that probe's quadrature is exact already
                m, exhausted = i + 1, bool((norms < 1e-10).all())
                break
            previous, q = q, w / norms[:, None]
            basis[i + 1 if reorthogonalize else (i + 1) % 2] = q
    return alphas[:m].numpy(), betas[:m].numpy(), exhausted


def _project_each(basis: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """For each probe b, basis[:, b]^T (basis[:, b] w[b]): the component of w's row b in the span of that probe's
    Lanczos vectors (``basis`` (steps, probes, P)), in w's dtype. Read a chunk of steps at a time (each step's
    term needs its own vectors only): a basis kept on another device (the host's memory) moves to w's a chunk at a
    time, never whole."""
    narrow = w.to(basis.dtype)  # a basis kept narrower: projected in its own dtype (see _Rows.project)
    out = torch.zeros_like(narrow)
    for part in basis.split(max(1, CHUNK // max(1, basis.shape[1] * basis.shape[2]))):
        part = part.to(w.device)
        out += torch.einsum("jb,jbp->bp", torch.einsum("jbp,bp->jb", part, narrow), part)
    return out.to(w.dtype)


def hutchinson(
    matvec: MatVec,
    p: int,
    *,
    probes: int,
    seed: int = 0,
    batch: int = HUTCHINSON_BATCH,
    deflate: tuple[np.ndarray, np.ndarray] | Krylov | None = None,
    dtype=torch.float64,
    device="cpu",
):
    """(estimate, standard error) of tr(H) from Rademacher probes: the mean of v^T H v, ``batch`` probes
    per Hessian-vector product call (memory grows with the batch, speed barely beyond 16).

    ``deflate = (eigenvalues, eigenvectors)`` as in :func:`slq`: the eigenvalues' sum plus Hutchinson on
    the complement of the eigenvectors (deflated Hutchinson, the estimator of Hutch++ with the top
    eigenvectors as its sketch). ``deflate`` a :class:`Krylov` basis V (``lanczos(..., keep_basis=True)``):
    tr(V^T H V) plus Hutchinson on the complement of V, the same estimator with the whole Krylov space as its
    sketch (its probes drawn with ``seed + 1``, apart from the basis's start)."""
    if isinstance(deflate, Krylov):
        # a stream apart from Lanczos's start vector (drawn with ``seed``): the estimator is unbiased for a basis
        # independent of the probes
        v, _, _ = _probes(p, probes, seed + 1, dtype, device, None)
        for b in v.split(batch):  # projected a batch at a time: the projection's work stays a batch's
            b -= deflate.project(b)
        exact = deflate.trace
    else:
        v, values, _ = _probes(p, probes, seed, dtype, device, deflate)
        exact = float(np.sum(values))
    samples = torch.cat([(matvec(b) * b).sum(1) for b in v.split(batch)]).double().cpu().numpy()
    se = samples.std(ddof=1) / np.sqrt(probes) if probes > 1 else float("nan")
    return exact + float(samples.mean()), float(se)


def krylov_trace(
    matvec: MatVec,
    p: int,
    *,
    steps: int = 10,
    probes: int = 16,
    seed: int = 0,
    batch: int = HUTCHINSON_BATCH,
    dtype=torch.float64,
    device="cpu",
):
    """(estimate, standard error) of tr(H) alone: ``steps`` Lanczos products build a Krylov basis V, whose part
    tr(V^T H V) is exact, and ``probes`` Rademacher probes projected off V estimate the rest (Hutch++'s estimator
    with the Krylov space as its sketch; unbiased for any basis drawn apart from the probes). A short basis takes
    the large eigenvalues' share of the variance: on ResNet-20 at initialisation 10 steps cut the probes' standard
    error 2.7x and 20 or 36 no further, so that 26 products matched 100 plain probes' standard error. A
    checkpoint of ``hessian=lanczos`` deflates by its top-k run's basis instead, which it builds anyway."""
    if steps < 1 or probes < 1:
        raise ValueError(f"krylov_trace needs steps >= 1 and probes >= 1, got steps={steps}, probes={probes}")
    run = lanczos(matvec, p, 1, tol=-1.0, max_iter=steps, seed=seed, values_only=True, dtype=dtype,
                  device=device, keep_basis=True)  # fmt: skip
    return hutchinson(matvec, p, probes=probes, seed=seed, batch=batch, deflate=run.krylov, dtype=dtype, device=device)

"""Random linear-regression prompts and their token matrix Z.

A prompt is n context pairs (x_i, y_i) and a query x_q, with

    x = U · diag(√λ) · g,   g ~ N(0, I) (or U(−a, a)^d, von Oswald et al. 2023),
    w* ~ N(0, I) or N(0, Σ⁻¹),   y_i = ⟨w*, x_i⟩ + σ·ξ_i,   y_q = ⟨w*, x_q⟩ (never noisy),

so that Σ = U diag(λ) Uᵀ has exactly the configured eigenvalues λ (for the uniform law, λ·a²/3). U is a
Haar-random rotation drawn once per run from its own generator, or given. Label noise is none, a fixed σ, or
a per-prompt σ drawn from U(0, σ_max) or uniformly from a categorical set (Vladymyrov et al. 2024).

Token layout (docs/conventions.md): tokens are rows, Z has shape (B, n+1, d+1), column d holds y, and the query
token is (x_q, 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import einsum, rearrange

from icl.prompt_config import PromptConfig
from icl.validation import check_float_dtype, check_generator, check_tensor


def haar_orthogonal(d: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-distributed d×d orthogonal matrix: QR of a Gaussian matrix with the sign of diag(R) fixed."""
    G = torch.randn(d, d, generator=generator, dtype=torch.float64, device=generator.device)
    Qm, R = torch.linalg.qr(G)
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1
    return (Qm * signs).to(dtype)


@dataclass
class PromptBatch:
    """A batch of prompts.

    Attributes:
        X: context inputs, (B, n, d).
        y: context targets (noisy if the law has noise), (B, n).
        x_query: query inputs, (B, d).
        y_query: noiseless query targets ⟨w*, x_q⟩, (B,).
        w_star: the task vectors, (B, d).
        Sigma: the input covariance, (d, d).
        U: the rotation, (d, d).
        sigma: the per-prompt label-noise standard deviation, (B,).
    """

    X: torch.Tensor
    y: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    w_star: torch.Tensor
    Sigma: torch.Tensor
    U: torch.Tensor
    sigma: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.X.shape[0]

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def d(self) -> int:
        return self.X.shape[2]

    def __len__(self) -> int:
        return self.batch_size

    def Z(self) -> torch.Tensor:
        """The token matrix (B, n+1, d+1): rows (x_i, y_i) for the context, then (x_q, 0)."""
        ctx = torch.cat([self.X, rearrange(self.y, "b n -> b n 1")], dim=-1)
        query = torch.cat([self.x_query, torch.zeros_like(self.y_query)[:, None]], dim=-1)
        return torch.cat([ctx, rearrange(query, "b e -> b 1 e")], dim=1)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> PromptBatch:
        """A copy on another device or in another floating dtype."""
        return PromptBatch(**{k: v.to(device=device, dtype=dtype) for k, v in self.__dict__.items()})

    def __getitem__(self, idx: slice) -> PromptBatch:
        """A sub-batch (Σ and U are shared)."""
        return PromptBatch(
            X=self.X[idx],
            y=self.y[idx],
            x_query=self.x_query[idx],
            y_query=self.y_query[idx],
            w_star=self.w_star[idx],
            Sigma=self.Sigma,
            U=self.U,
            sigma=self.sigma[idx],
        )


class PromptDistribution:
    """The prompt law of a config with its rotation fixed; sample batches from it with explicit generators.

    Args:
        cfg: the prompt config.
        U: a given d×d orthogonal rotation; if None, drawn Haar-random from ``generator`` (rotation = haar)
            or the identity (rotation = identity).
        generator: the run's ``rotation`` stream (required when U must be drawn).
        dtype: floating dtype of the samples.
    """

    def __init__(
        self,
        cfg: PromptConfig,
        *,
        U: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(cfg, PromptConfig):
            raise ValueError(f"cfg must be a PromptConfig, got {type(cfg).__name__}")
        if generator is not None:
            check_generator("generator", generator)
        self.cfg = cfg
        self.dtype = check_float_dtype("dtype", dtype)
        d = cfg.d
        if U is None:
            if cfg.rotation == "identity":
                U = torch.eye(d, dtype=torch.float64)
            else:
                if generator is None:
                    raise ValueError("a generator (the run's 'rotation' stream) is needed to draw a Haar U")
                U = haar_orthogonal(d, generator)
        U = check_tensor("U", U, shape=(d, d)).to(torch.float64).cpu()
        if not torch.allclose(U.T @ U, torch.eye(d, dtype=torch.float64), atol=1e-8):
            raise ValueError("U must be orthogonal (UᵀU = I)")
        lam = torch.tensor(cfg.spectrum(), dtype=torch.float64)
        var_g = cfg.uniform_a**2 / 3 if cfg.input_law == "uniform" else 1.0
        self.U = U
        self.eigenvalues = lam * var_g
        self.Sigma = U @ torch.diag(self.eigenvalues) @ U.T
        self._Ls = U * lam.sqrt()  # x = Ls g
        self._Lw = U / (lam * var_g).sqrt()  # w* = Lw h ~ N(0, Σ⁻¹)

    def sample(self, batch_size: int, generator: torch.Generator) -> PromptBatch:
        """Draw ``batch_size`` prompts on the generator's device."""
        x, w, sigma, xi = self.draw(batch_size, generator)
        X, y, x_query, y_query = targets(x, w, sigma, xi)
        dev, dt = generator.device, self.dtype
        return PromptBatch(
            X=X,
            y=y,
            x_query=x_query,
            y_query=y_query,
            w_star=w,
            Sigma=self.Sigma.to(dev, dt),
            U=self.U.to(dev, dt),
            sigma=sigma,
        )

    def draw(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The random part of :meth:`sample`: every draw of one batch from ``generator``, in a fixed order (g, h,
        σ, ξ), and the inputs and task vectors they give.

        Returns:
            x: the inputs (B, n+1, d), the query last; w*: (B, d); σ: (B,); ξ: the unit label noise (B, n), None
            for a noiseless law. :func:`targets` turns them into the prompts' targets.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        x = torch.empty(batch_size, self.cfg.n + 1, self.cfg.d, device=generator.device, dtype=self.dtype)
        return (x, *self.draw_into(x, generator))

    def draw_into(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`draw`, writing the inputs x = U·diag(√λ)·g into ``x`` (B, n+1, d) in place: a tensor whose
        (B·(n+1), d) rows are one matrix with unit column stride, such as the x columns of a token array
        ``Z[..., :d]``, so that a seed batch's inputs land in their token array without a copy
        (:func:`sample_tokens`). Returns w*, σ and ξ as :meth:`draw` does."""
        check_generator("generator", generator)
        check_float_dtype("dtype", self.dtype)
        self._check_scale(self.dtype)
        cfg, dev, dt = self.cfg, generator.device, self.dtype
        B, n, d = x.shape[0], cfg.n, cfg.d
        if tuple(x.shape) != (B, n + 1, d) or x.dtype != dt or x.device != dev:
            raise ValueError(f"x must be ({B}, {n + 1}, {d}) {dt} on {dev}, got {tuple(x.shape)} {x.dtype} on "
                             f"{x.device}")  # fmt: skip
        g = torch.empty(B, n + 1, d, device=dev, dtype=dt)
        if cfg.input_law == "gaussian":
            torch.randn(B, n + 1, d, generator=generator, out=g)
        else:
            torch.rand(B, n + 1, d, generator=generator, out=g).mul_(2).sub_(1).mul_(cfg.uniform_a)
        torch.mm(g.view(B * (n + 1), d), self._Ls.to(dev, dt).T, out=x.view(B * (n + 1), d))
        h = torch.randn(B, d, generator=generator, device=dev, dtype=dt)
        w = h if cfg.w_prior == "identity" else einsum(h, self._Lw.to(dev, dt), "b k, i k -> b i")
        sigma = self._sample_sigma(B, generator)
        xi = None
        if cfg.noise != "none":
            xi = torch.randn(B, n, generator=generator, device=dev, dtype=dt)
        return w, sigma, xi

    def _check_scale(self, dtype: torch.dtype) -> None:
        """Refuse a law whose values (or their squares, as in losses and XᵀX) overflow ``dtype``.

        Pure float arithmetic on the config (no host sync), done once per dtype: a clear error instead of
        prompts that silently hold inf and losses that silently become NaN.
        """
        if getattr(self, "_scale_ok", None) == dtype:
            return
        cfg = self.cfg
        lam = [float(v) * (cfg.uniform_a**2 / 3 if cfg.input_law == "uniform" else 1.0) for v in cfg.spectrum()]
        with_inf = lambda f: f() if all(v > 0 for v in lam) else math.inf
        m_x = math.sqrt(max(lam))
        m_w = 1.0 if cfg.w_prior == "identity" else with_inf(lambda: 1 / math.sqrt(min(lam)))
        m_s = {"fixed": cfg.sigma, "uniform": cfg.sigma_max, "categorical": max(cfg.sigma_set, default=0.0)}
        m_y = m_x * m_w * math.sqrt(cfg.d) + m_s.get(cfg.noise, 0.0)
        big = 10 * max(m_x, m_w, m_y) * math.sqrt(max(cfg.n, cfg.d))  # ~10 standard deviations, summed over n, d
        top = torch.finfo(dtype).max
        if not big < math.sqrt(top):
            name = str(dtype).replace("torch.", "")
            raise ValueError(
                f"the prompt law's scale overflows {name}: |x| ~ {m_x:.3g}, |w*| ~ {m_w:.3g}, |y| ~ {m_y:.3g}, whose "
                f"squares (~{big:.3g}²) exceed the largest {name} ({top:.3g}); use train.dtype=float64 or "
                "rescale prompt.eigenvalues / uniform_a / sigma"
            )
        self._scale_ok = dtype

    def _sample_sigma(self, B: int, generator: torch.Generator) -> torch.Tensor:
        cfg, dev, dt = self.cfg, generator.device, self.dtype
        if cfg.noise == "fixed":
            return torch.full((B,), cfg.sigma, device=dev, dtype=dt)
        if cfg.noise == "uniform":
            return torch.rand(B, generator=generator, device=dev, dtype=dt) * cfg.sigma_max
        if cfg.noise == "categorical":
            levels = torch.tensor(cfg.sigma_set, device=dev, dtype=dt)
            idx = torch.randint(len(levels), (B,), generator=generator, device=dev)
            return levels[idx]
        return torch.zeros(B, device=dev, dtype=dt)

    def sample_many(self, total: int, generator: torch.Generator, chunk: int = 50_000):
        """Yield batches that together hold ``total`` prompts (for large test sets)."""
        for start in range(0, total, chunk):
            yield self.sample(min(chunk, total - start), generator)


def targets(
    x: torch.Tensor, w: torch.Tensor, sigma: torch.Tensor, xi: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prompts' targets from :meth:`PromptDistribution.draw`'s draws, for any leading batch dimensions
    (``...``): y_i = ⟨w*, x_i⟩ + σ·ξ_i, y_q = ⟨w*, x_q⟩.

    Args:
        x: inputs (..., n+1, d), the query last; w: task vectors (..., d); sigma: (...); xi: (..., n) or None.

    Returns:
        X (..., n, d), y (..., n), x_query (..., d), y_query (...).
    """
    n = x.shape[-2] - 1
    X, x_query = x[..., :n, :], x[..., n, :]
    y = einsum(X, w, "... n i, ... i -> ... n")
    if xi is not None:
        y = y + sigma[..., None] * xi
    y_query = einsum(x_query, w, "... i, ... i -> ...")
    return X, y, x_query, y_query


def stack_problem(dists: Sequence[PromptDistribution]) -> str | None:
    """Why the seeds' laws ``dists`` can not share one token array (None: they can)."""
    if len({(d.cfg.n, d.cfg.d, d.cfg.noise == "none") for d in dists}) > 1:
        return "the seeds' prompt laws differ in n, d or label noise: their batches can not be stacked"
    if len({d.dtype for d in dists}) > 1:
        return "the seeds' prompt laws sample in different dtypes: their batches can not be stacked"
    return None


def sample_tokens(
    dists: Sequence[PromptDistribution], batch_size: int, generators: Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch per seed, written into one token array: Z (S, B, n+1, d+1) in :meth:`PromptBatch.Z`'s layout and
    the query targets (S, B).

    Seed s draws from ``generators[s]`` exactly what ``dists[s].sample(batch_size, generators[s])`` draws, and
    ``Z[s]`` equals that batch's ``Z()`` bit for bit (tests/test_prompts.py): the draws and the per-seed rotation
    are each seed's own, the targets' contractions run once over all seeds (their per-prompt arithmetic does not
    depend on the batch) and each seed's inputs are written straight into Z (:meth:`PromptDistribution.draw_into`).
    A law whose class overrides :meth:`PromptDistribution.sample` is sampled through it.

    Raises:
        ValueError: the laws differ in n, d, dtype or in having label noise (:func:`stack_problem`).
    """
    dists, generators = list(dists), list(generators)
    if not dists or len(dists) != len(generators):
        raise ValueError(f"need one generator per prompt law, got {len(dists)} laws and {len(generators)} generators")
    problem = stack_problem(dists)
    if problem:
        raise ValueError(problem)
    first = dists[0]
    S, n, d = len(dists), first.cfg.n, first.cfg.d
    Z = torch.empty(S, batch_size, n + 1, d + 1, device=generators[0].device, dtype=first.dtype)
    if any(type(dist).sample is not PromptDistribution.sample for dist in dists):  # a law with its own sample
        y_query = Z.new_empty((S, batch_size))
        for s, (dist, gen) in enumerate(zip(dists, generators)):
            batch = dist.sample(batch_size, gen)
            Z[s], y_query[s] = batch.Z(), batch.y_query
        return Z, y_query
    ws, sigmas, xis = [], [], []
    for s, (dist, gen) in enumerate(zip(dists, generators)):
        w, sigma, xi = dist.draw_into(Z[s, :, :, :d], gen)
        ws.append(w)
        sigmas.append(sigma)
        xis.append(xi)
    xi = None if xis[0] is None else torch.stack(xis)
    _, y, _, y_query = targets(Z[..., :d], torch.stack(ws), torch.stack(sigmas), xi)
    Z[:, :, :n, d] = y
    Z[:, :, n, d] = 0
    return Z, y_query


def zero_predictor_loss(cfg: PromptConfig) -> float:
    """E(⟨w*, x_q⟩)² = tr(Σ Ω): d for w* ~ N(0, Σ⁻¹), tr Σ for w* ~ N(0, I)."""
    var_g = cfg.uniform_a**2 / 3 if cfg.input_law == "uniform" else 1.0
    if cfg.w_prior == "inverse_sigma":
        return float(cfg.d)
    return float(math.fsum(cfg.spectrum()) * var_g)

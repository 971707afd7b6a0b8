"""The law of the prompts as a config (:class:`PromptConfig`), torch-free so that a study's config is resolved
and validated without loading torch; the sampling lives in :mod:`icl.prompts`, which re-exports it."""

from __future__ import annotations

from dataclasses import dataclass

from icl.config import Config, ConfigError, spec


@dataclass(frozen=True)
class PromptConfig(Config):
    """The law of the prompts.

    Attributes:
        d: input dimension.
        n: number of context points.
        eigenvalues: the spectrum λ of Σ (length d, all > 0); None for the isotropic Σ = I.
        rotation: ``haar`` draws U from the run's ``rotation`` stream; ``identity`` uses U = I.
        input_law: ``gaussian`` or ``uniform`` (g ~ U(−a, a) per coordinate).
        uniform_a: the half-width a of the uniform law (von Oswald et al.'s code uses a = 0.5).
        w_prior: ``identity`` for w* ~ N(0, I), ``inverse_sigma`` for w* ~ N(0, Σ⁻¹).
        noise: ``none``, ``fixed`` (σ = sigma), ``uniform`` (σ ~ U(0, sigma_max) per prompt) or
            ``categorical`` (σ uniform over sigma_set per prompt).
    """

    d: int = spec(5, ge=1)
    n: int = spec(20, ge=1)
    eigenvalues: tuple[float, ...] | None = spec(None, gt=0, allow_repeats=True)
    rotation: str = spec("haar", choices=("haar", "identity"))
    input_law: str = spec("gaussian", choices=("gaussian", "uniform"))
    uniform_a: float = spec(0.5, gt=0)
    w_prior: str = spec("identity", choices=("identity", "inverse_sigma"))
    noise: str = spec("none", choices=("none", "fixed", "uniform", "categorical"))
    sigma: float = spec(0.0, ge=0)
    sigma_max: float = spec(0.0, ge=0)
    sigma_set: tuple[float, ...] = spec((1.0, 3.0), ge=0, allow_repeats=True)

    def check(self) -> None:
        if self.eigenvalues is not None and len(self.eigenvalues) != self.d:
            raise ConfigError(
                f"eigenvalues has {len(self.eigenvalues)} entries but d = {self.d}: give one per dimension"
            )
        if self.noise == "categorical" and not self.sigma_set:
            raise ConfigError("sigma_set must not be empty when noise = 'categorical'")

    def spectrum(self) -> tuple[float, ...]:
        """The eigenvalues of Σ, as configured (ones when isotropic)."""
        return self.eigenvalues if self.eigenvalues is not None else (1.0,) * self.d

    def mean_noise_var(self) -> float:
        """E[σ²] over prompts."""
        if self.noise == "fixed":
            return self.sigma**2
        if self.noise == "uniform":
            return self.sigma_max**2 / 3
        if self.noise == "categorical":
            return sum(s**2 for s in self.sigma_set) / len(self.sigma_set)
        return 0.0

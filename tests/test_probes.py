"""Probes: exact implicit weights, read-out and reference fitting recover hand-set models, comparison metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from einops import einsum

import reference_optimizers as ro
from icl.prompts import PromptConfig, PromptDistribution
from learned_optimizers import GPT, MODES, GPTConfig, LinearSelfAttention, LSAConfig, Memformer, MemformerConfig
from learned_optimizers.constructions import gd_lsa, gd_plus_plus_lsa, heavy_ball_memformer, preconditioned_gd_lsa
from learned_optimizers.probes import compare, fit_reference, implicit_weights, interpolate, predictions_at, read_out

D, N = 4, 12


def prompts(B: int = 16, seed: int = 0, eigenvalues=None):
    g = torch.Generator().manual_seed(seed)
    cfg = PromptConfig(d=D, n=N, eigenvalues=eigenvalues)
    return PromptDistribution(cfg, generator=g, dtype=torch.float64).sample(B, g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mode", MODES)
def test_basis_weights_equal_autograd_for_linear_models(mode):
    Z = prompts().Z()
    lsa = LinearSelfAttention(D, LSAConfig(layers=3, heads=2, mode=mode, init_std=0.1), gen()).double()
    mem = Memformer(
        D, MemformerConfig(attention=lsa.cfg, memory="lfom", gamma_shape="full", n=N, gamma_init="ones"), gen()
    ).double()
    for model in (lsa, mem):
        w = implicit_weights(model, Z)
        assert w.shape == (16, 4, D)
        torch.testing.assert_close(w, implicit_weights(model, Z, method="autograd"), rtol=1e-12, atol=1e-12)
        # and the model really is ŷ_ℓ = ⟨w_ℓ, x_q⟩ at the prompt's own query
        with torch.no_grad():
            pred = model.layer_predictions(Z)
        torch.testing.assert_close(pred, einsum(w, Z[:, -1, :D], "b l d, b d -> b l"), rtol=1e-12, atol=1e-12)


def linear_gpt() -> GPT:
    """A GPT that is linear in x_q by construction: no LayerNorm, zero query weights (uniform causal attention
    averages), MLP switched off."""
    model = GPT(D, GPTConfig(layers=2, heads=2, width=8, max_points=N, layer_norm=False, init_std=0.5), gen()).double()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.c_attn.weight[:8].zero_()  # W_Q = 0
            block.mlp[2].weight.zero_()
    return model


def test_gpt_autograd_weights_equal_exact_on_a_linear_gpt():
    model = linear_gpt()
    Z = prompts().Z()
    w = implicit_weights(model, Z)  # autograd (GPT.query_linear is False)
    exact = implicit_weights(model, Z, method="basis")  # exact: ŷ_ℓ(e_k) − ŷ_ℓ(0) for a linear (affine) model
    torch.testing.assert_close(w, exact, rtol=0, atol=1e-10)
    assert float(w[:, -1].abs().max()) > 1e-3  # not trivially zero
    # it is affine in x_q: predictions at random queries are ŷ(0) + ⟨w, x⟩
    q = torch.randn(16, 5, D, generator=gen(1), dtype=torch.float64)
    with torch.no_grad():
        at = predictions_at(model, Z, q)
        at0 = predictions_at(model, Z, torch.zeros(1, D, dtype=torch.float64))
    torch.testing.assert_close(at, at0 + einsum(w, q, "b l d, b k d -> b l k"), rtol=0, atol=1e-10)
    # a real GPT is not linear in x_q, and autograd still gives the local model
    gpt = GPT(D, GPTConfig(layers=1, width=8, max_points=N), gen()).double()
    assert implicit_weights(gpt, Z).shape == (16, 2, D)


def test_read_out_recovers_step_sizes_and_coefficients():
    etas, betas = [0.5, 0.8, 1.2], [0.0, 0.4, 0.7]
    r = read_out(heavy_ball_memformer(D, 3, etas, betas))
    torch.testing.assert_close(r.step_sizes, torch.tensor(etas, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(r.heavy_ball_eta, torch.tensor(etas, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(r.heavy_ball_beta, torch.tensor(betas, dtype=torch.float64), rtol=0, atol=1e-14)
    assert torch.all(r.dist_identity.abs() < 1e-14)
    # A_ℓ = c_ℓ Σ⁻¹: Dist(Σ^½AΣ^½, I) = 0, the step size in Σ⁻¹ units is c_ℓ, Dist(A, I) is not 0
    Sigma = prompts(eigenvalues=(2.0, 1.0, 0.5, 0.25)).Sigma
    cs = torch.tensor([0.3, 0.9], dtype=torch.float64)
    model = preconditioned_gd_lsa(cs[:, None, None] * torch.linalg.inv(Sigma))
    r = read_out(model, Sigma)
    torch.testing.assert_close(r.step_sizes, cs, rtol=0, atol=1e-12)
    assert torch.all(r.dist_identity < 1e-12) and torch.all(r.dist_identity_raw > 0.1)
    # GD++: A = η·I, B = (γ/η)·I; diag: Vladymyrov's ω_yx = −η
    r = read_out(gd_plus_plus_lsa(D, 2, [0.5, 2.0], [0.1, 0.3]))
    torch.testing.assert_close(r.B[:, 0, 0, 0], torch.tensor([0.2, 0.15], dtype=torch.float64), rtol=0, atol=1e-14)
    r = read_out(gd_lsa(D, 2, [0.5, 2.0], mode="diag"))
    torch.testing.assert_close(r.omegas[:, 2], torch.tensor([-0.5, -2.0], dtype=torch.float64))
    torch.testing.assert_close(r.step_sizes, torch.tensor([0.5, 2.0], dtype=torch.float64))
    for mode in ("full", "factorised"):
        torch.testing.assert_close(read_out(gd_lsa(D, 2, [0.5, 2.0], mode=mode)).step_sizes, r.step_sizes)
    lfom = Memformer(D, MemformerConfig(memory="lfom", gamma_shape="feature", gamma_init="ones"))
    assert read_out(lfom).Gamma.shape == (1, D + 1)
    assert read_out(GPT(D, GPTConfig(layers=2, heads=2, width=8), gen())).qk.shape == (2, 2, D, D)


@pytest.mark.parametrize(
    "family, model, params",
    [
        ("gradient_descent", gd_lsa(D, 3, [0.5, 0.8, 1.2]), {"eta": [0.5, 0.8, 1.2]}),
        ("heavy_ball", heavy_ball_memformer(D, 3, [0.5, 0.8, 1.2], [0.0, 0.4, 0.7]), {"beta": [0.0, 0.4, 0.7]}),
        ("gd_plus_plus", gd_plus_plus_lsa(D, 3, [0.5, 0.8, 1.2], [0.2, 0.1, 0.0]), {"gamma": [0.2, 0.1, 0.0]}),
    ],
)
def test_fit_reference_recovers_hand_set_hyperparameters(family, model, params):
    b = prompts()
    fit = fit_reference(model, family, b)
    assert fit.family == family and fit.relative_error < 1e-10
    np.testing.assert_allclose(fit.params["eta"], [0.5, 0.8, 1.2], rtol=0, atol=1e-8)
    for name, value in params.items():
        np.testing.assert_allclose(fit.params[name], value, rtol=0, atol=1e-8)
    auto = fit_reference(model, "auto", b)
    assert auto.relative_error < 1e-10 and auto.errors[family] < 1e-10
    assert auto.family == family or auto.errors[auto.family] < 1e-10  # GD is also heavy ball with β = 0


def test_fit_reference_recovers_per_step_preconditioners():
    """A sparse LSA running preconditioned GD with non-scalar P_ℓ: the preconditioned family recovers every P_ℓ,
    no scalar family can, and "auto" never offers GD++ (a sparse LSA cannot express it)."""
    b = prompts(B=64)
    g = gen(3)
    P = 0.5 * torch.eye(D, dtype=torch.float64) + 0.2 * torch.randn(3, D, D, generator=g, dtype=torch.float64)
    fit = fit_reference(preconditioned_gd_lsa(P), "auto", b)
    assert fit.family == "preconditioned_gd" and fit.matched and fit.relative_error < 1e-10
    np.testing.assert_allclose(fit.params["P"], P.numpy(), rtol=0, atol=1e-8)
    assert "gd_plus_plus" not in fit.errors and "heavy_ball" not in fit.errors
    assert fit.errors["gradient_descent"] > 0.1
    assert fit.parameter_counts == {"gradient_descent": 3, "preconditioned_gd": 3 * D * D,
                                    "conjugate_gradient": 0, "newton": 0}


def test_fit_reference_prefers_the_smaller_family_on_a_tie_and_says_when_nothing_fits():
    b = prompts(B=64)
    # scalar steps: GD and preconditioned GD both fit exactly; the 3-value family wins over the 48-value one
    fit = fit_reference(gd_lsa(D, 3, [0.5, 0.8, 1.2]), "auto", b)
    assert fit.family == "gradient_descent" and fit.errors["preconditioned_gd"] < 1e-10
    # a random full LSA runs no classical method: the best family is reported, but as no match
    model = LinearSelfAttention(D, LSAConfig(layers=3, mode="full", init_std=0.3), gen(1)).double()
    fit = fit_reference(model, "auto", b)
    assert not fit.matched and fit.relative_error > fit.threshold
    assert fit_reference(model, "auto", b, threshold=10.0).matched
    with pytest.raises(ValueError, match="threshold"):
        fit_reference(model, "auto", b, threshold=0.0)


def test_expressible_families_follow_the_model_class():
    from learned_optimizers.probes import FAMILIES, PARAMETER_FREE, expressible_families

    sparse = expressible_families(gd_lsa(D, 2, 0.5))
    assert set(sparse) == {"gradient_descent", "preconditioned_gd", *PARAMETER_FREE}
    assert "gd_plus_plus" in expressible_families(gd_plus_plus_lsa(D, 2, 0.5, 0.1))
    cgd = expressible_families(heavy_ball_memformer(D, 2, 0.5, 0.1))
    assert "heavy_ball" in cgd and "nesterov" not in cgd
    lfom = Memformer(D, MemformerConfig(memory="lfom", gamma_shape="feature", gamma_init="ones"))
    assert {"heavy_ball", "nesterov"} <= set(expressible_families(lfom))
    gpt = GPT(D, GPTConfig(layers=1, width=8), gen())
    assert set(expressible_families(gpt)) == set(FAMILIES)


def test_compare_matches_the_diagonal_of_its_own_method():
    b = prompts()
    etas = [0.5, 0.8, 1.2]
    c = compare(gd_lsa(D, 3, etas), b, ro.gradient_descent(b.X, b.y, 3, etas))
    assert c.sim_e.shape == c.sim_w.shape == c.model_cosine.shape == (4, 4)
    np.testing.assert_allclose(np.diag(c.model_l2), 0, atol=1e-12)
    np.testing.assert_allclose(np.diag(c.prediction_l2), 0, atol=1e-12)
    np.testing.assert_allclose(np.diag(c.loss_difference), 0, atol=1e-12)
    np.testing.assert_allclose(np.diag(c.sim_e), 1, atol=1e-12)
    np.testing.assert_allclose(np.diag(c.model_cosine)[1:], 1, atol=1e-12)
    assert list(c.best_step_sime) == [0, 1, 2, 3] and list(c.best_step_simw[1:]) == [1, 2, 3]
    # the softmax model works too (SimW by a least-squares fit of its predictions)
    gpt = GPT(D, GPTConfig(layers=1, width=8, max_points=N), gen()).double()
    c = compare(gpt, b, ro.gradient_descent(b.X, b.y, 3, 0.5), generator=gen(2))
    assert c.sim_w.shape == (2, 4) and np.all(np.isfinite(c.sim_e))
    with pytest.raises(ValueError, match="generator"):
        compare(gpt, b, ro.gradient_descent(b.X, b.y, 3, 0.5))


def test_interpolate_between_trained_and_constructed_weights():
    b = prompts()
    trained = gd_lsa(D, 2, [0.3, 0.4])
    constructed = gd_lsa(D, 2, [0.9, 1.1])
    losses = interpolate(trained, constructed, [0.0, 0.5, 1.0], b)
    for t, model in ((0, trained), (2, constructed)):
        with torch.no_grad():
            assert losses[t] == pytest.approx(float((model(b.Z()) - b.y_query).square().mean()), abs=1e-12)
    with torch.no_grad():
        mid = float((gd_lsa(D, 2, [0.6, 0.75])(b.Z()) - b.y_query).square().mean())
    assert losses[1] == pytest.approx(mid, abs=1e-12)
    with pytest.raises(ValueError, match="same class"):
        interpolate(trained, heavy_ball_memformer(D, 2, 0.5, 0.1), [0.5], b)


def test_probes_reject_bad_input():
    b = prompts()
    model = gd_lsa(D, 2, 0.5)
    Z = b.Z()
    Z[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="Z contains NaN"):
        implicit_weights(model, Z)
    with pytest.raises(ValueError, match="reference_iterates"):
        compare(model, b, torch.zeros(16, 3, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="family"):
        fit_reference(model, "adam", b)
    with pytest.raises(ValueError, match="method"):
        implicit_weights(model, b.Z(), method="finite_differences")

"""The fused CPU kernels (learned_optimizers/fused.py) compute what the torch code and the textbook forms compute:
forward and gradients in float64 to 1e-12 for every LSA mode, heads, tied weights and the Memformers' memories;
torch.autograd.gradcheck on the custom Functions; the seed batch's vmap; threads; and the fallbacks."""

import itertools

import pytest
import torch
from test_linear_attention import quadratic_lsa_layer
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from learned_optimizers import LinearSelfAttention, LSAConfig, Memformer, MemformerConfig, fused
from learned_optimizers.linear_attention import MODES, context_gram, prompt_statistics

f64 = {"dtype": torch.float64}

pytestmark = pytest.mark.skipif(not fused.usable(torch.zeros(1, 2, 3)), reason="no C compiler: the fused kernels "
                                "are unavailable here (the models run their torch code, tested elsewhere)")  # fmt: skip


def prompts(gen, batch=37, n=9, d=4):
    """Tokens whose batch is not a multiple of the kernel's 16 lanes (a partial block is exercised)."""
    Z = torch.randn(batch, n + 1, d + 1, generator=gen, **f64)
    Z[:, -1, -1] = 0
    return Z


def quadratic_prediction(model, Z):
    """ŷ from the (n+1)×(n+1) score-matrix form, layer by layer with the model's padded P, Q."""
    for layer in range(model.layers):
        Z = quadratic_lsa_layer(Z, *model.layer_weights(layer))
    return -Z[:, -1, -1]


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def grads(model, Z, fn=None):
    out = model(Z) if fn is None else fn(model, Z)
    return out, torch.autograd.grad(out.square().sum(), list(model.parameters()))


@pytest.mark.parametrize("mode, heads, tied", list(itertools.product(MODES, [1, 3], [False, True])))
def test_fused_lsa_equals_torch_path_and_quadratic_form(mode, heads, tied, gen):
    model = LinearSelfAttention(4, LSAConfig(layers=3, heads=heads, mode=mode, tied=tied, init_std=0.5), gen).double()
    Z = prompts(gen)
    assert fused.usable(Z)
    out, g = grads(model, Z)
    with fused.disabled():
        torch_out, torch_g = grads(model, Z)
    quad_out, quad_g = grads(model, Z, quadratic_prediction)
    assert rel(out, quad_out) < 1e-12 and rel(out, torch_out) < 1e-12
    assert rel(out, model.layer_predictions(Z)[:, -1]) < 1e-12
    for a, b, c in zip(g, torch_g, quad_g):
        assert rel(a, c) < 1e-12 and rel(a, b) < 1e-12


MEMORY_CONFIGS = [
    {"memory": "cgd"},
    {"memory": "lfom", "gamma_shape": "scalar", "gamma_init": "ones"},
    {"memory": "lfom", "gamma_shape": "feature", "gamma_init": "ones"},
    {"memory": "lfom", "gamma_shape": "feature", "gamma_shared": False, "gamma_init": "identity"},
    {"memory": "lfom", "gamma_shape": "scalar", "fixed_current": True},
]


@pytest.mark.parametrize("memory, mode, tied", itertools.product(MEMORY_CONFIGS, ["sparse", "full"], [False, True]))
def test_fused_memformer_equals_torch_path_and_token_recursion(memory, mode, tied, gen):
    att = LSAConfig(layers=3, heads=2, mode=mode, tied=tied, init_std=0.5)
    model = Memformer(4, MemformerConfig(attention=att, **memory), gen).double()
    with torch.no_grad():
        for p in (model.alpha, model.gamma, model.Gamma):
            if p is not None:
                p.add_(0.3 * torch.randn(p.shape, generator=gen, **f64))
    Z = prompts(gen)
    out, g = grads(model, Z)
    with fused.disabled():
        torch_out, torch_g = grads(model, Z)
    tok_out, tok_g = grads(model, Z, lambda m, Z: -m.tokens(Z)[-1][:, -1, -1])
    assert rel(out, tok_out) < 1e-12 and rel(out, torch_out) < 1e-12
    for a, b, c in zip(g, torch_g, tok_g):
        assert rel(a, c) < 1e-12 and rel(a, b) < 1e-12


def test_gradcheck_of_the_custom_functions(gen):
    e, L, B, n = 3, 2, 19, 5
    Z = prompts(gen, batch=B, n=n, d=e - 1)
    G0, zq = prompt_statistics(Z)
    K = (0.3 * torch.randn(L, e * (e + 1) // 2, e * e, generator=gen, **f64)).requires_grad_()
    C = torch.randn(L, L, e, generator=gen, **f64).tril_().requires_grad_()  # only c_{ℓj}, j ≤ ℓ, are read
    assert torch.autograd.gradcheck(lambda K, C: fused.gram_space(G0, zq, K, C.tril(), n), (K, C))
    A = (0.3 * torch.randn(L, e - 1, e - 1, generator=gen, **f64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda A: fused.sparse(G0, zq, A, n), (A,))
    Zg = Z.clone().requires_grad_()
    assert torch.autograd.gradcheck(fused.context_gram, (Zg,))


@pytest.mark.parametrize("batch, n, d", [(1, 1, 1), (15, 5, 2), (16, 20, 5), (17, 3, 5), (40, 20, 5), (33, 7, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prompt_statistics_equal_torch(batch, n, d, dtype, gen):
    Z = torch.randn(batch, n + 1, d + 1, generator=gen, dtype=dtype)
    G, zq = prompt_statistics(Z)
    ref = Z[:, :-1].mT @ Z[:, :-1]
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    assert torch.allclose(G, ref, rtol=tol, atol=tol * ref.abs().max().item())
    assert torch.equal(zq, Z[:, -1]) and torch.allclose(context_gram(Z), G, rtol=0, atol=0)


def test_float32_kernel_agrees_with_float64(gen):
    model = LinearSelfAttention(5, LSAConfig(layers=3, mode="full", init_std=0.3), gen).double()
    Z = prompts(gen, batch=100, n=20, d=5)
    ref = model(Z)
    assert rel(model.float()(Z.float()).double(), ref) < 1e-5


class GramCall(nn.Module):
    def __init__(self, model, n):
        super().__init__()
        self.model, self.n = model, n

    def forward(self, G0, zq):
        return self.model.forward_gram(G0, zq, self.n)


@pytest.mark.parametrize("mode", ["sparse", "gdpp"])
def test_vmap_over_seeds_equals_each_seed(mode, gen, monkeypatch):
    """The seed batch calls forward_gram under torch.func.vmap over stacked weights: the kernels' vmap rule folds
    the seeds into their leading dimension."""
    folds = []
    fold = fused._fold_vmap
    monkeypatch.setattr(fused, "_fold_vmap", lambda *args: folds.append(1) or fold(*args))
    calls = [GramCall(LinearSelfAttention(4, LSAConfig(layers=2, heads=2, mode=mode, init_std=0.5), gen).double(), 9)
             for _ in range(3)]  # fmt: skip
    params, buffers = stack_module_state(calls)
    Zs = torch.stack([prompts(gen, batch=21) for _ in calls])
    G0, zq = context_gram(Zs.flatten(0, 1)).unflatten(0, (3, 21)), Zs[:, :, -1]
    out = vmap(lambda p, b, G0, zq: functional_call(calls[0], (p, b), (G0, zq)))(params, buffers, G0, zq)
    g = torch.autograd.grad(out.square().sum(), list(params.values()))
    assert folds  # the kernel ran under vmap (not the torch code)
    for s, call in enumerate(calls):
        ref = call(G0[s], zq[s])
        ref_g = torch.autograd.grad(ref.square().sum(), list(call.parameters()))
        assert rel(out[s], ref) < 1e-12
        for a, b in zip(g, ref_g):
            assert rel(a[s], b) < 1e-12


def test_threads_give_the_same_result(gen):
    model = LinearSelfAttention(3, LSAConfig(layers=2, mode="full", init_std=0.5), gen).double()
    Z = prompts(gen, batch=9000, n=4, d=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = grads(model, Z)
        torch.set_num_threads(2)
        assert fused._threads(9000) == 2
        two = grads(model, Z)
    finally:
        torch.set_num_threads(before)
    for a, b in zip((one[0], *one[1]), (two[0], *two[1])):
        assert rel(a, b) < 1e-12


def test_fallbacks(gen, monkeypatch, tmp_path):
    Z = prompts(gen)
    with fused.disabled():
        assert not fused.usable(Z)
    assert not fused.usable(Z.requires_grad_())  # data with a gradient asked for: the torch code
    assert not fused.usable(Z.detach().float().to(torch.bfloat16))
    monkeypatch.setenv("ICL_FUSED", "0")
    assert not fused.usable(Z.detach())
    monkeypatch.delenv("ICL_FUSED")
    monkeypatch.setenv("ICL_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a compiler that fails: a warning, and no kernel
    with pytest.warns(UserWarning, match="torch code"):
        assert fused.library.__wrapped__(7, torch.float64) is None
    assert not list(tmp_path.rglob("*.so"))


@pytest.mark.parametrize("mode", MODES)
def test_active_entries_hold_every_non_zero_of_W(mode, gen):
    """The kernel computes only the entries of W_ℓ that the mode marks active: the others must be zero for any
    weights and any Gram matrix."""
    model = LinearSelfAttention(4, LSAConfig(layers=2, heads=2, mode=mode, init_std=1.0), gen).double()
    G = context_gram(prompts(gen))
    inactive = ~torch.tensor(model.active_entries()).reshape(5, 5)
    for layer in range(2):
        W = model.layer_matrix(G, layer)
        assert torch.all(W[:, inactive] == 0)


def test_disabled_is_per_thread_and_nests(monkeypatch):
    """fused.disabled() switches the kernels off in its own thread only, nested blocks restore the outer state,
    and ICL_FUSED=0 switches them off everywhere (read at every call)."""
    import threading

    seen = []
    assert fused.enabled()
    with fused.disabled():
        t = threading.Thread(target=lambda: seen.append(fused.enabled()))
        t.start()
        t.join()
        with fused.disabled():
            assert not fused.enabled()
        assert not fused.enabled()
    assert fused.enabled() and seen == [True]
    monkeypatch.setenv("ICL_FUSED", "0")
    assert not fused.enabled()
    monkeypatch.setenv("ICL_FUSED", "1")
    assert fused.enabled()

"""Numerics of FAdam, RF-RMSProp, RF-AdamW and SIRFShampoo.

1. Three-step trajectories on a fixed tiny problem, against the algorithms re-written independently in
   numpy float64 (matched to 1e-10), one row per optimizer option.
2. Anchors to the published reference implementations: values produced by pytorch_optimizer 4.1.0,
   lessw2020/FAdam_PyTorch, yorkerlin/remove-the-square-root and sirfshampoo 0.0.1 in float32, as
   recorded from the public reference implementations (see the anchors below).
3. Convergence on an ill-conditioned matrix quadratic and on Rosenbrock (tolerances stated in the tests).
4. Argument validation and ``make_optimizer``.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from icl.optim import OPTIMIZERS, FAdam, RFAdamW, RFRMSProp, SIRFShampoo, make_optimizer

# ---------------------------------------------------------------------------------------------------------
# The fixed tiny problem (the reference report's Appendix A/B set-up, plus a third matrix gradient).
THETA0 = np.array([0.5, -1.0, 2.0, 0.0])
GRADS = [
    np.array([0.1, -0.2, 0.3, 0.0]),
    np.array([0.05, 0.1, -0.1, 0.2]),
    np.array([1e-3, 0.0, -2e-3, 5e-4]),
]
ZERO_GRADS = [GRADS[0], np.zeros(4), GRADS[2]]  # an all-zero gradient in the middle
W0 = np.array([[0.5, -1.0, 2.0], [0.0, 0.25, -0.5]])
WGRADS = [
    np.array([[0.1, -0.2, 0.3], [0.0, 0.05, -0.1]]),
    np.array([[0.05, 0.1, -0.1], [0.2, -0.3, 0.0]]),
    np.array([[-0.3, 0.0, 0.1], [0.02, 0.4, -0.2]]),
]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


# ---------------------------------------------------------------------------------------------------------
# Independent numpy float64 versions of the algorithms, written from the equations in the docstrings.
def np_fadam(theta, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, clip=1.0, p=0.5, weight_decay=0.1,
             eps2=0.01, eps_mode="min_eps_eps2rms", eps_pow_2p=True, clip_mode="rms_over_c",
             maximize=False):  # fmt: skip
    b1, b2 = betas
    th, m, f = theta.copy(), np.zeros_like(theta), np.zeros_like(theta)

    def clipped(x):
        if clip_mode == "rms_over_c":
            return x / max(1.0, _rms(x) / clip)
        return x / (max(1.0, _rms(x)) / clip)

    for t, g in enumerate(grads, start=1):
        g = -g if maximize else g
        b2_hat = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
        f = b2_hat * f + (1 - b2_hat) * g * g
        r = _rms(g)
        if r == 0:
            e = eps
        elif eps_mode == "min_eps_eps2rms":
            e = min(eps, eps2 * r)
        elif eps_mode == "min_eps_rms":
            e = eps * min(1.0, r)
        else:
            e = eps * max(1.0, r)
        d = f**p + e ** (2 * p if eps_pow_2p else 1.0)
        m = b1 * m + (1 - b1) * clipped(g / d)
        th = th - lr * (m + weight_decay * clipped(th / d))
    return th


def np_rf_rmsprop(theta, grads, lr=1e-3, lr_cov=0.01, damping=1e-4, momentum=0.9, weight_decay=0.0,
                  batch_size=1, s_init=1.0, maximize=False):  # fmt: skip
    th, s, buf = theta.copy(), np.full_like(theta, s_init), np.zeros_like(theta)
    for g in grads:
        g = -g if maximize else g
        s = (1 - lr_cov) * s + lr_cov * batch_size * g * g
        u = g / (s + damping) + weight_decay * th
        if momentum:
            buf = momentum * buf + u
            u = buf
        th = th - lr * u
    return th


def np_rf_adamw(theta, grads, lr=1e-3, betas=(0.9, 0.99), damping=1e-4, weight_decay=1e-2, batch_size=1,
                s_init=1.0, bias_correction=False, maximize=False):  # fmt: skip
    b1, b2 = betas
    th, m, s = theta.copy(), np.zeros_like(theta), np.full_like(theta, s_init)
    for t, g in enumerate(grads, start=1):
        g = -g if maximize else g
        th = th * (1 - lr * weight_decay)
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * batch_size * g * g
        c1, c2 = (1 - b1**t, 1 - b2**t) if bias_correction else (1.0, 1.0)
        th = th - lr / c1 * m / (s / c2 + damping)
    return th


def np_sirfshampoo(W, v, wgrads, vgrads, lr=1e-3, beta2=0.01, alpha1=0.9, alpha2=0.5, lam=1e-3,
                   weight_decay=0.0, batch_size=1, T=1, maximize=False):  # fmt: skip
    """A matrix W (Kronecker factors) and a vector v (root-free diagonal fallback), stepped together."""
    W, v = W.copy(), v.copy()
    do, di = W.shape
    K = [np.eye(do), np.eye(di)]
    mom = [np.zeros((do, do)), np.zeros((di, di))]
    bufW, bufv, s = np.zeros_like(W), np.zeros_like(v), np.ones_like(v)
    B = batch_size
    for t, (G, g) in enumerate(zip(wgrads, vgrads)):
        G, g = (-G, -g) if maximize else (G, g)
        if t % T == 0:
            Ko, Ki = K
            H = Ko.T @ G @ Ki
            M = [
                0.5 * (lam * np.trace(Ki.T @ Ki) / di * Ko.T @ Ko + B / di * H @ H.T - np.eye(do)),
                0.5 * (lam * np.trace(Ko.T @ Ko) / do * Ki.T @ Ki + B / do * H.T @ H - np.eye(di)),
            ]
            for n in range(2):
                mom[n] = alpha2 * mom[n] + (1 - alpha2) * M[n]
                K[n] = K[n] - beta2 / max(1.0, np.linalg.norm(mom[n], "fro")) * K[n] @ mom[n]
        U = K[0] @ K[0].T @ G @ K[1] @ K[1].T + weight_decay * W
        s = (1 - beta2) * s + beta2 * B * g * g
        u = g / (s + lam) + weight_decay * v
        if alpha1:
            bufW, bufv = alpha1 * bufW + U, alpha1 * bufv + u
            U, u = bufW, bufv
        W, v = W - lr * U, v - lr * u
    return W, v, K


def _run_torch(cls, theta, grads, **kw):
    p = torch.nn.Parameter(torch.tensor(theta, dtype=torch.float64))
    opt = cls([p], **kw)
    for g in grads:
        grad = torch.tensor(g, dtype=torch.float64)
        p.grad = grad
        opt.step()
        assert torch.equal(grad, torch.tensor(g, dtype=torch.float64)), "p.grad was modified in place"
    return p.detach().numpy()


# ---------------------------------------------------------------------------------------------------------
# 1. Trajectories against numpy float64.
BIG_EPS = dict(eps=0.05, eps2=0.5)  # makes the adaptive-eps variants differ visibly on this problem
DIAGONAL_CASES = [
    # (id, torch class, numpy function, kwargs, gradients)
    ("fadam-default", FAdam, np_fadam, dict(lr=0.1), GRADS),
    ("fadam-no-decay", FAdam, np_fadam, dict(lr=0.1, weight_decay=0.0), GRADS),
    ("fadam-clip0.5", FAdam, np_fadam, dict(lr=0.1, clip=0.5), GRADS),
    ("fadam-clip0.5-legacy", FAdam, np_fadam, dict(lr=0.1, clip=0.5, clip_mode="legacy"), GRADS),
    ("fadam-clip2-legacy", FAdam, np_fadam, dict(lr=0.1, clip=2.0, clip_mode="legacy"), GRADS),
    ("fadam-eps-min_eps_eps2rms", FAdam, np_fadam, dict(lr=0.1, **BIG_EPS), GRADS),
    ("fadam-eps-min_eps_rms", FAdam, np_fadam, dict(lr=0.1, eps_mode="min_eps_rms", **BIG_EPS), GRADS),
    ("fadam-eps-max_rms", FAdam, np_fadam, dict(lr=0.1, eps_mode="max_rms", **BIG_EPS), GRADS),
    ("fadam-p1", FAdam, np_fadam, dict(lr=0.1, p=1.0, **BIG_EPS), GRADS),
    ("fadam-p1-eps-pow1", FAdam, np_fadam, dict(lr=0.1, p=1.0, eps_pow_2p=False, **BIG_EPS), GRADS),
    ("fadam-maximize", FAdam, np_fadam, dict(lr=0.1, maximize=True), GRADS),
    ("fadam-betas", FAdam, np_fadam, dict(lr=0.1, betas=(0.5, 0.9)), GRADS),
    ("fadam-zero-grad", FAdam, np_fadam, dict(lr=0.1), ZERO_GRADS),
    ("fadam-zero-grad-min_eps_rms", FAdam, np_fadam, dict(lr=0.1, eps_mode="min_eps_rms"), ZERO_GRADS),
    ("rf_rmsprop-appendixA", RFRMSProp, np_rf_rmsprop, dict(lr=0.01, batch_size=8), GRADS),
    ("rf_rmsprop-default", RFRMSProp, np_rf_rmsprop, dict(lr=0.01), GRADS),
    ("rf_rmsprop-no-momentum", RFRMSProp, np_rf_rmsprop, dict(lr=0.01, momentum=0.0), GRADS),
    ("rf_rmsprop-decay", RFRMSProp, np_rf_rmsprop, dict(lr=0.01, weight_decay=0.1), GRADS),
    ("rf_rmsprop-cov-damping", RFRMSProp, np_rf_rmsprop, dict(lr=0.01, lr_cov=0.5, damping=0.1), GRADS),
    ("rf_rmsprop-s_init", RFRMSProp, np_rf_rmsprop, dict(lr=0.01, s_init=0.25, batch_size=3), GRADS),
    ("rf_rmsprop-maximize", RFRMSProp, np_rf_rmsprop, dict(lr=0.01, maximize=True), GRADS),
    ("rf_adamw-appendixA", RFAdamW, np_rf_adamw, dict(lr=0.01, weight_decay=0.0, batch_size=8), GRADS),
    ("rf_adamw-default", RFAdamW, np_rf_adamw, dict(lr=0.01), GRADS),
    ("rf_adamw-decay", RFAdamW, np_rf_adamw, dict(lr=0.01, weight_decay=0.5), GRADS),
    ("rf_adamw-bias-correction", RFAdamW, np_rf_adamw, dict(lr=0.01, bias_correction=True), GRADS),
    ("rf_adamw-betas-damping", RFAdamW, np_rf_adamw, dict(lr=0.01, betas=(0.5, 0.5), damping=0.1), GRADS),
    ("rf_adamw-s_init", RFAdamW, np_rf_adamw, dict(lr=0.01, s_init=0.25, batch_size=3), GRADS),
    ("rf_adamw-maximize", RFAdamW, np_rf_adamw, dict(lr=0.01, maximize=True), GRADS),
]


@pytest.mark.parametrize(
    ("cls", "np_fn", "kwargs", "grads"),
    [case[1:] for case in DIAGONAL_CASES],
    ids=[case[0] for case in DIAGONAL_CASES],
)
def test_diagonal_trajectory_matches_numpy(cls, np_fn, kwargs, grads):
    got = _run_torch(cls, THETA0, grads, **kwargs)
    want = np_fn(THETA0, grads, **kwargs)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert np.all(np.isfinite(got))


def test_diagonal_cases_are_distinct():
    """Each option row must change the trajectory, else its row above tests nothing new."""
    finals = {}
    for name, cls, _, kwargs, grads in DIAGONAL_CASES:
        finals[name] = _run_torch(cls, THETA0, grads, **kwargs)
    names = list(finals)
    same = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if np.allclose(finals[a], finals[b], atol=1e-7)]
    assert same == [], same


SIRF_CASES = [
    ("default", dict(lr=0.1, batch_size=4)),
    ("beta2-alpha2-0", dict(lr=0.1, batch_size=4, beta2=0.5, alpha2=0.0)),
    ("T2", dict(lr=0.1, batch_size=4, beta2=0.3, T=2)),
    ("decay-no-momentum", dict(lr=0.1, weight_decay=0.05, alpha1=0.0)),
    ("lam-batch", dict(lr=0.05, lam=0.5, batch_size=16, beta2=0.2)),
    ("maximize", dict(lr=0.1, batch_size=4, maximize=True)),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in SIRF_CASES], ids=[c[0] for c in SIRF_CASES])
def test_sirfshampoo_trajectory_matches_numpy(kwargs):
    W = torch.nn.Parameter(torch.tensor(W0))
    v = torch.nn.Parameter(torch.tensor(THETA0))
    opt = SIRFShampoo([W, v], **kwargs)
    for G, g in zip(WGRADS, GRADS):
        W.grad, v.grad = torch.tensor(G), torch.tensor(g)
        opt.step()
    W_np, v_np, K_np = np_sirfshampoo(W0, THETA0, WGRADS, GRADS, **kwargs)
    np.testing.assert_allclose(W.detach().numpy(), W_np, rtol=0, atol=1e-10)
    np.testing.assert_allclose(v.detach().numpy(), v_np, rtol=0, atol=1e-10)
    np.testing.assert_allclose(opt.state[W]["K_out"].numpy(), K_np[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(opt.state[W]["K_in"].numpy(), K_np[1], rtol=0, atol=1e-10)
    assert not np.allclose(K_np[0], np.eye(2)), "the factors must have moved"


# ---------------------------------------------------------------------------------------------------------
# 2. Anchors: float32 values produced by the public reference implementations (report, Appendices A, B).
ANCHORS = [
    # pytorch_optimizer 4.1.0 (our default modes); atol 1e-7: float32 runs of the same formulas
    (FAdam, dict(lr=0.1), [0.43115503, -0.95453596, 1.93907750, -0.02674185], 1e-7),
    (FAdam, dict(lr=0.1, weight_decay=0.0), [0.46072656, -0.98491842, 1.98150837, -0.02690664], 1e-7),
    (
        FAdam,
        dict(lr=0.1, weight_decay=0.0, clip=0.5),
        [0.47725916, -0.99129349, 1.98937070, -0.01555462],
        1e-7,
    ),
    # lessw2020 HEAD (legacy clip, eps*max(1, RMS), eps to the power 1); atol 1e-6: lessw adds eps in
    # a different order and keeps f initialised to ones
    (
        FAdam,
        dict(lr=0.1, weight_decay=0.0, clip=0.5, clip_mode="legacy", eps_mode="max_rms", eps_pow_2p=False),
        [0.48036331, -0.99245924, 1.99075413, -0.01345336],
        1e-6,
    ),
    (
        FAdam,
        dict(lr=0.1, weight_decay=0.0, clip=2.0, clip_mode="legacy", eps_mode="max_rms", eps_pow_2p=False),
        [0.42145318, -0.96983689, 1.96301675, -0.05381345],
        1e-6,
    ),
    (
        FAdam,
        dict(lr=0.1, clip_mode="legacy", eps_mode="max_rms", eps_pow_2p=False),
        [0.43115506, -0.95453584, 1.93907750, -0.02674194],
        1e-6,
    ),
    # yorkerlin/remove-the-square-root MyRmsProp and MyAdamW
    (
        RFRMSProp,
        dict(lr=0.01, lr_cov=0.01, damping=1e-4, momentum=0.9, batch_size=8),
        [0.49628660, -0.99647397, 1.99379122, -0.00386928],
        1e-7,
    ),
    (
        RFAdamW,
        dict(lr=0.01, betas=(0.9, 0.99), damping=1e-4, weight_decay=0.0, batch_size=8),
        [0.49962565, -0.99964345, 1.99937284, -0.00038878],
        1e-7,
    ),
]


@pytest.mark.parametrize(("cls", "kwargs", "want", "atol"), ANCHORS)
def test_matches_published_reference_values(cls, kwargs, want, atol):
    got = _run_torch(cls, THETA0, GRADS, **kwargs)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize(
    ("kwargs", "W2"),
    [
        (dict(), [[0.4757151, -0.9719115, 1.9527864], [-0.0204620, 0.2710858, -0.4808052]]),
        (
            dict(beta2=0.5, alpha2=0.0),
            [[0.4275458, -0.9630046, 1.9338241], [-0.0790543, 0.3398027, -0.4506890]],
        ),
    ],
)
def test_sirfshampoo_matches_package_values(kwargs, W2):
    """sirfshampoo 0.0.1, nn.Linear(3, 2, bias=False), batch_size 4, lr 0.1, two steps, float32."""
    W = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float32))
    opt = SIRFShampoo([W], lr=0.1, batch_size=4, **kwargs)
    for G in WGRADS[:2]:
        W.grad = torch.tensor(G, dtype=torch.float32)
        opt.step()
    np.testing.assert_allclose(W.detach().numpy(), W2, rtol=0, atol=2e-7)
    if not kwargs:
        K_out = [[1.0054752, 2.6781383e-4], [2.6789057e-4, 1.0057520]]
        np.testing.assert_allclose(opt.state[W]["K_out"].numpy(), K_out, rtol=0, atol=2e-7)


# ---------------------------------------------------------------------------------------------------------
# 3. Convergence (float64, cosine-decayed lr).
def _quadratic():
    gen = torch.Generator().manual_seed(0)

    def spd(n):  # condition number 10
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        return q @ torch.diag(torch.logspace(0, 1, n, dtype=torch.float64)) @ q.T

    P, Q = spd(3), spd(4)
    W_star = torch.randn(3, 4, generator=gen, dtype=torch.float64)

    def loss(W):  # 1/2 tr((W - W*)^T P (W - W*) Q): Hessian P (x) Q, condition number 100
        D = W - W_star
        return 0.5 * torch.trace(D.T @ P @ D @ Q)

    return loss, torch.zeros(3, 4, dtype=torch.float64), W_star


def _rosenbrock():
    def loss(x):
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    return loss, torch.tensor([-1.2, 1.0], dtype=torch.float64), torch.ones(2, dtype=torch.float64)


def _minimise(name, problem, steps, lr, **kwargs):
    loss_fn, x0, x_star = problem()
    x = torch.nn.Parameter(x0.clone())
    opt = make_optimizer(name, [x], lr=lr, **kwargs)

    def closure():
        opt.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        return loss

    for k in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * k / steps))
        opt.step(closure)
    return float((x.detach() - x_star).norm())


CONVERGENCE = [
    # (name, problem, steps, lr, kwargs); weight decay off so that the minimiser is unchanged
    ("adam", _quadratic, 500, 0.1, {}),
    ("fadam", _quadratic, 500, 0.1, dict(weight_decay=0.0)),
    ("rf_rmsprop", _quadratic, 500, 0.1, {}),
    ("rf_adamw", _quadratic, 500, 0.1, dict(weight_decay=0.0)),
    ("sirfshampoo", _quadratic, 500, 0.05, dict(lam=0.1)),  # Kronecker factors on the 3x4 matrix
    ("adam", _rosenbrock, 2500, 0.1, {}),
    ("fadam", _rosenbrock, 2500, 0.05, dict(weight_decay=0.0, betas=(0.9, 0.99))),
    ("rf_rmsprop", _rosenbrock, 2000, 0.01, {}),
    ("rf_adamw", _rosenbrock, 2000, 0.03, dict(weight_decay=0.0)),
    ("sirfshampoo", _rosenbrock, 2000, 0.01, {}),  # a 2-vector: the diagonal fallback
]


@pytest.mark.parametrize(
    ("name", "problem", "steps", "lr", "kwargs"),
    CONVERGENCE,
    ids=[f"{c[0]}-{c[1].__name__.strip('_')}" for c in CONVERGENCE],
)
def test_convergence(name, problem, steps, lr, kwargs):
    """Tolerance: final distance to the minimiser < 1e-5 (quadratic), < 1e-3 (Rosenbrock from (-1.2, 1))."""
    tol = 1e-5 if problem is _quadratic else 1e-3
    err = _minimise(name, problem, steps, lr, **kwargs)
    assert err < tol, f"{name}: distance {err:.3e} to the minimiser"


# ---------------------------------------------------------------------------------------------------------
# 4. Validation and the registry helper.
INVALID = [
    (FAdam, "lr", dict(lr=-1.0)),
    (FAdam, "betas", dict(betas=(0.9,))),
    (FAdam, r"betas\[1\]", dict(betas=(0.9, 1.0))),
    (FAdam, "eps", dict(eps=0.0)),
    (FAdam, "clip", dict(clip=0.0)),
    (FAdam, "p", dict(p=-0.5)),
    (FAdam, "weight_decay", dict(weight_decay=-0.1)),
    (FAdam, "eps2", dict(eps2=0.0)),
    (FAdam, "eps_mode", dict(eps_mode="paper")),
    (FAdam, "clip_mode", dict(clip_mode="norm")),
    (FAdam, "eps_pow_2p", dict(eps_pow_2p=1)),
    (RFRMSProp, "lr", dict(lr=float("nan"))),
    (RFRMSProp, "lr_cov", dict(lr_cov=0.0)),
    (RFRMSProp, "lr_cov", dict(lr_cov=1.5)),
    (RFRMSProp, "damping", dict(damping=-1e-4)),
    (RFRMSProp, "momentum", dict(momentum=1.0)),
    (RFRMSProp, "batch_size", dict(batch_size=0)),
    (RFRMSProp, "s_init", dict(s_init=0.0)),
    (RFAdamW, r"betas\[0\]", dict(betas=(-0.1, 0.99))),
    (RFAdamW, "weight_decay", dict(weight_decay=-1.0)),
    (RFAdamW, "batch_size", dict(batch_size=-8)),
    (RFAdamW, "bias_correction", dict(bias_correction="yes")),
    (SIRFShampoo, "beta2", dict(beta2=0.0)),
    (SIRFShampoo, "alpha1", dict(alpha1=1.0)),
    (SIRFShampoo, "alpha2", dict(alpha2=-0.5)),
    (SIRFShampoo, "lam", dict(lam=-1.0)),
    (SIRFShampoo, "T", dict(T=0)),
    (SIRFShampoo, "T", dict(T=1.5)),
    (SIRFShampoo, "preconditioner_dtype", dict(preconditioner_dtype=torch.int32)),
    (SIRFShampoo, "max_factor_dim", dict(max_factor_dim=0)),
]


@pytest.mark.parametrize(("cls", "arg", "kwargs"), INVALID, ids=[f"{c[0].__name__}-{c[1]}" for c in INVALID])
def test_invalid_arguments_raise_naming_the_argument(cls, arg, kwargs):
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=rf"^{arg} must"):
        cls([p], **kwargs)
    with pytest.raises(ValueError, match=rf"^{arg} must"):  # a parameter group's override is checked too
        cls([{"params": [p], **kwargs}])


def test_make_optimizer():
    p = torch.nn.Parameter(torch.zeros(2))
    for name in ("adam", "adamw", "sgd", "fadam", "rf_rmsprop", "rf_adamw", "sirfshampoo"):
        assert isinstance(make_optimizer(name, [p], lr=0.1), OPTIMIZERS[name])
    assert make_optimizer("fadam", [p], clip=0.5).defaults["clip"] == 0.5
    with pytest.raises(ValueError, match="valid names: .*fadam.*sirfshampoo"):
        make_optimizer("lion", [p])


def test_sirfshampoo_factor_shapes_and_fallback():
    big = torch.nn.Parameter(torch.zeros(3, 9))
    row = torch.nn.Parameter(torch.zeros(1, 5))  # a size-1 axis: treated as a vector
    conv = torch.nn.Parameter(torch.zeros(2, 3, 2, 2))
    opt = SIRFShampoo([big, row, conv], max_factor_dim=8)
    mat = torch.nn.Parameter(torch.zeros(3, 4))
    opt.add_param_group({"params": [mat]})
    for p in (big, row, conv, mat):
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[mat]["K_out"].shape == (3, 3) and opt.state[mat]["K_in"].shape == (4, 4)
    for p in (big, row, conv):  # 9 > max_factor_dim, a size-1 axis, an order-4 tensor
        assert "K_out" not in opt.state[p] and opt.state[p]["s"].shape == p.shape


def test_sirfshampoo_bfloat16_factors_track_float32():
    """Inverse/root-free factors in bfloat16 (MLP, 30 steps, T=2): the loss stays within 5% of float32."""
    X = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    Y = torch.sin(X.sum(1, keepdim=True))
    finals = {}
    for dtype, factor_dtype in [
        (torch.float32, None),
        (torch.bfloat16, None),
        (torch.float32, torch.bfloat16),
    ]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(dtype)
        opt = SIRFShampoo(model.parameters(), lr=0.05, batch_size=64, T=2, preconditioner_dtype=factor_dtype)
        with torch.no_grad():
            start = float(((model(X.to(dtype)) - Y) ** 2).mean())
        for _ in range(30):
            opt.zero_grad()
            loss = ((model(X.to(dtype)) - Y.to(dtype)) ** 2).mean()
            loss.backward()
            opt.step()
        assert opt.state[model[0].weight]["K_in"].dtype == (factor_dtype or dtype)
        finals[(dtype, factor_dtype)] = loss.item()
        assert loss.item() < 0.85 * start
    ref = finals[(torch.float32, None)]
    for key, value in finals.items():
        assert abs(value - ref) < 0.05 * ref, (key, value, ref)

    # a dtype stored in the parameter groups survives torch.load(weights_only=True)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt.param_groups[0]["preconditioner_dtype"] == torch.bfloat16
    assert opt.state[model[0].weight]["K_in"].dtype == torch.bfloat16

"""torch.optim-style property tests for every optimizer registered in ``icl.optim.OPTIMIZERS``.

Each registered class is built as ``OPTIMIZERS[name](params, lr=...)`` (other arguments at their
defaults; ``weight_decay`` is overridden where a test needs it), so a newly registered optimizer gets these
tests without edits here. torch's Adam, AdamW and SGD are registered too and act as controls.

The model has a matrix (Kronecker factors in SIRFShampoo), a vector and a 0-dim parameter.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from icl.optim import OPTIMIZERS

NAMES = sorted(OPTIMIZERS)
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
LR = 0.01


def build(name, params, **kwargs):
    kwargs.setdefault("lr", LR)
    return OPTIMIZERS[name](params, **kwargs)


class Tiny(torch.nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(3, 4, generator=gen).to(dtype))
        self.bias = torch.nn.Parameter(0.1 * torch.randn(3, generator=gen).to(dtype))
        self.scale = torch.nn.Parameter(torch.tensor(1.5, dtype=dtype))  # 0-dim

    def forward(self, x):
        return self.scale * (x @ self.weight.T + self.bias)


def data(dtype):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=gen).to(dtype), torch.randn(8, 3, generator=gen).to(dtype)


def loss_fn(model, dtype=torch.float32):
    X, Y = data(dtype)
    return ((model(X) - Y) ** 2).mean()


def train(model, opt, steps, dtype=torch.float32):
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model, dtype).backward()
        opt.step()


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_params_equal(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype
        assert torch.equal(x, y), (x - y).abs().max()


def state_tensors(opt):
    return [
        (i, k, v)
        for i, (_, st) in enumerate(sorted(opt.state_dict()["state"].items()))
        for k, v in st.items()
        if torch.is_tensor(v)
    ]


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_with_different_hyperparameters(name):
    """Groups behave like separate optimizers with those settings; a group with lr 0 does not move."""
    model, ref = Tiny(), Tiny()
    groups = [
        {"params": [model.weight], "lr": 0.02, "weight_decay": 0.0},
        {"params": [model.bias], "lr": 0.005, "weight_decay": 0.01},
        {"params": [model.scale], "lr": 0.0},
    ]
    opt = build(name, groups)
    ref_opts = [
        build(name, [ref.weight], lr=0.02, weight_decay=0.0),
        build(name, [ref.bias], lr=0.005, weight_decay=0.01),
        build(name, [ref.scale], lr=0.0),
    ]
    scale0 = model.scale.detach().clone()
    before = snapshot(model)
    for _ in range(4):
        for o in [opt, *ref_opts]:
            o.zero_grad()
        loss_fn(model).backward()
        loss_fn(ref).backward()
        opt.step()
        for o in ref_opts:
            o.step()
    assert_params_equal(snapshot(model), snapshot(ref))
    assert torch.equal(model.scale.detach(), scale0)
    assert not torch.equal(model.weight.detach(), before[0])
    assert not torch.equal(model.bias.detach(), before[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_mid_training_continues_identically(name, dtype):
    model = Tiny(dtype)
    groups = [{"params": [model.weight]}, {"params": [model.bias, model.scale], "lr": 0.003}]
    opt = build(name, groups)
    train(model, opt, 3, dtype)

    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    clone = copy.deepcopy(model)
    opt2 = build(name, [{"params": [clone.weight]}, {"params": [clone.bias, clone.scale], "lr": 0.003}])
    opt2.load_state_dict(loaded)

    before = state_tensors(opt)
    after = state_tensors(opt2)
    assert [(i, k) for i, k, _ in before] == [(i, k) for i, k, _ in after]
    for (_, key, v1), (_, _, v2) in zip(before, after):
        assert v1.dtype == v2.dtype, f"{key}: {v1.dtype} saved, {v2.dtype} after load_state_dict"
        assert torch.equal(v1, v2), key
    assert opt2.param_groups[1]["lr"] == 0.003

    train(model, opt, 4, dtype)
    train(clone, opt2, 4, dtype)
    assert_params_equal(snapshot(model), snapshot(clone))
    for (_, key, v1), (_, _, v2) in zip(state_tensors(opt), state_tensors(opt2)):
        assert torch.equal(v1, v2), key


@pytest.mark.parametrize("name", NAMES)
def test_none_gradients_are_skipped(name):
    model = Tiny()
    opt = build(name, model.parameters())
    before = snapshot(model)

    def closure():
        return loss_fn(model)  # no backward: every grad stays None

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and torch.isfinite(loss)
    assert_params_equal(snapshot(model), before)
    assert len(opt.state) == 0 or all(not st for st in opt.state.values())

    # only the matrix gets a gradient: the others are untouched and get no state
    loss_fn(model).backward()
    model.bias.grad = None
    model.scale.grad = None
    opt.step()
    assert not torch.equal(model.weight.detach(), before[0])
    assert torch.equal(model.bias.detach(), before[1])
    assert torch.equal(model.scale.detach(), before[2])
    assert not opt.state.get(model.bias) and not opt.state.get(model.scale)


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients(name):
    # without weight decay a zero gradient from the start is a no-op (torch's convention)
    model = Tiny()
    opt = build(name, model.parameters(), weight_decay=0.0)
    before = snapshot(model)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    assert_params_equal(snapshot(model), before)
    assert all(torch.isfinite(v).all() for _, _, v in state_tensors(opt))

    # with the default settings (FAdam: decay 0.1) a zero gradient mid-training stays finite
    model = Tiny()
    opt = build(name, model.parameters())
    train(model, opt, 2)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(v).all() for _, _, v in state_tensors(opt))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_dtypes_train_and_keep_precision(name, dtype):
    model = Tiny(dtype)
    opt = build(name, model.parameters(), lr=0.05)
    with torch.no_grad():  # losses measured in float64 on the (possibly rounded) parameters
        start = float(loss_fn(copy.deepcopy(model).to(torch.float64), torch.float64))

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, dtype)
        loss.backward()
        return loss

    for _ in range(15):
        loss = opt.step(closure)
        assert loss.dtype == dtype
    for p in model.parameters():
        assert p.dtype == dtype and torch.isfinite(p).all()
    with torch.no_grad():
        end = float(loss_fn(copy.deepcopy(model).to(torch.float64), torch.float64))
    assert end < 0.9 * start, (start, end)
    for _, key, v in state_tensors(opt):
        assert torch.isfinite(v).all(), key
        # 16-bit parameters: moments in float32 (SIRFShampoo's K, m factors may be bfloat16 by design)
        if dtype == torch.bfloat16 and name in ("fadam", "rf_rmsprop", "rf_adamw", "sirfshampoo"):
            if key not in ("K_out", "K_in", "m_out", "m_in"):
                assert v.dtype == torch.float32, key


@pytest.mark.parametrize("name", NAMES)
def test_closure_loss_is_returned_and_repr_works(name):
    model = Tiny()
    opt = build(name, model.parameters())
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        return loss

    assert opt.step(closure) is not None and calls == [1]
    assert opt.step() is None
    assert type(opt).__name__ in repr(opt)

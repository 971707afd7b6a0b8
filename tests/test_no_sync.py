"""The training step never reads a tensor back to the host (losses are read every log_every steps).

On CPU the host reads (``item``, ``float``, ``bool``, ``tolist``, …) are intercepted and recorded during
``train_step``; the only ones allowed are the optimizers' own step counters, which torch keeps on the CPU
whatever the device (reading them never waits for the accelerator). With CUDA the step also runs under
``torch.cuda.set_sync_debug_mode("error")``.
"""

import pytest
import torch

from icl.prompts import PromptConfig, PromptDistribution
from icl.seeding import Streams
from icl.training import TrainConfig, Trainer
from learned_optimizers import build_model

READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
MODELS = {
    "lsa": ("lsa", {"layers": 2}),
    "lsa-full": ("lsa", {"layers": 2, "heads": 2, "mode": "full"}),
    "memformer-lfom": ("memformer", {"attention": {"layers": 2}, "memory": "lfom", "gamma_shape": "feature"}),
    "gpt": ("gpt", {"layers": 1, "heads": 2, "width": 16, "max_points": 8}),
}


@pytest.fixture
def host_reads(monkeypatch):
    seen = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def record(self, *args, _original=original, **kwargs):
            seen.append(self)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, record)
    return seen


def step_counters(optimizer):
    return {id(s["step"]) for s in optimizer.state.values() if isinstance(s.get("step"), torch.Tensor)}


def make(kind, device="cpu", **train):
    name, cfg = MODELS[kind]
    streams = Streams(0)
    model = build_model(name, 3, cfg, generator=streams.generator("init"))
    dist = PromptDistribution(PromptConfig(d=3, n=8), generator=streams.generator("rotation"))
    tcfg = TrainConfig(batch_size=16, eval_batch=16, **train)
    return Trainer(model, dist, tcfg, streams, device=device, quiet=True)


def test_the_interception_sees_host_reads(host_reads):
    t = torch.ones(2)
    float(t.sum()), t.max().item(), bool(t[0] > 0), t.tolist()
    assert len(host_reads) == 4


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("clip", ["none", "global", "per_matrix"])
def test_train_step_reads_nothing_back(kind, clip, host_reads):
    trainer = make(kind, clip=clip, optimizer="adamw")
    trainer.train_step()  # the optimizer state appears at the first step
    host_reads.clear()
    for _ in range(3):
        trainer.train_step()
    allowed = step_counters(trainer.optimizer)
    assert all(id(t) in allowed for t in host_reads), [tuple(t.shape) for t in host_reads if id(t) not in allowed]


@pytest.mark.parametrize("clip", ["global", "per_matrix"])
def test_seed_batch_step_reads_nothing_back(clip, host_reads):
    streams = [Streams(0), Streams(1)]
    prompt = PromptConfig(d=3, n=8)
    models = [build_model("lsa", 3, {"layers": 2}, generator=s.generator("init")) for s in streams]
    dists = [PromptDistribution(prompt, generator=s.generator("rotation")) for s in streams]
    trainer = Trainer(models, dists, TrainConfig(batch_size=16, eval_batch=16, clip=clip), streams)
    trainer.train_step()
    host_reads.clear()
    for _ in range(3):
        trainer.train_step()
    allowed = step_counters(trainer.optimizer)
    assert all(id(t) in allowed for t in host_reads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", list(MODELS))
def test_cuda_train_step_does_not_synchronise(kind):
    trainer = make(kind, device="cuda", clip="global")
    trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")

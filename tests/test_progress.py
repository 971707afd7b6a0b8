"""Progress: the lines and ETA of Progress, bars shown only on a terminal and kept when done, tune's bar."""

from __future__ import annotations

import io

import pytest
import torch

import icl.progress as progress
from icl.progress import Progress, bar, format_duration
from reference_optimizers import gradient_descent
from reference_optimizers.tuning import tune


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_format_duration():
    assert [format_duration(s) for s in (0, 7.4, 65, 3599, 7440)] == ["0s", "7s", "1m05s", "59m59s", "2h04m"]


def test_progress_lines_and_eta():
    clock, lines = Clock(), []
    p = Progress(4, "model", printer=lines.append, clock=clock)
    assert p.eta() is None
    clock.t += 10
    p.finished("lsa_L1", 10.0)
    assert p.eta() == pytest.approx(30.0)  # 10 s per model, 3 left
    assert lines[0].startswith("model 1/4 lsa_L1 done in 10s; run ETA 30s (at ")
    clock.t += 30
    p.finished("lsa_L2", 30.0)
    assert p.eta() == pytest.approx(40.0)  # 20 s per model, 2 left
    clock.t += 1
    p.finished("lsa_L3", 1.0, "diverged")
    p.finished("lsa_L4")
    assert lines[2].startswith("model 3/4 lsa_L3 diverged in 1s; run ETA ")
    assert lines[3] == "model 4/4 lsa_L4 done"  # no ETA once everything is done


def test_progress_resumed_items_do_not_enter_the_rate():
    clock, lines = Clock(), []
    p = Progress(5, "run", done=3, printer=lines.append, clock=clock)
    assert p.eta() is None
    clock.t += 12
    p.finished("r4")
    assert p.eta() == pytest.approx(12.0) and lines[0].startswith("run 4/5 r4 done; run ETA 12s")
    quiet = Progress(2, quiet=True, printer=lines.append, clock=clock)
    quiet.finished("x")
    assert len(lines) == 1
    with pytest.raises(ValueError, match="done <= total"):
        Progress(2, done=3)


def test_bars_only_on_a_terminal_and_they_stay(monkeypatch):
    assert bar(3, "x").disable  # pytest's stderr is not a terminal
    monkeypatch.setattr(progress, "is_terminal", lambda stream=None: True)
    assert bar(3, "x", quiet=True).disable
    b = bar(3, "x")
    assert not b.disable and b.leave
    b.close()


def test_tune_bar_counts_every_evaluation_and_ends_full(monkeypatch):
    monkeypatch.setattr(progress, "is_terminal", lambda stream=None: True)
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 20, 3, generator=g, dtype=torch.float64)
    w = torch.randn(64, 3, generator=g, dtype=torch.float64)
    xq = torch.randn(64, 3, generator=g, dtype=torch.float64)
    prompts = {"X": X, "y": torch.einsum("bnd,bd->bn", X, w), "x_query": xq, "y_query": (xq * w).sum(-1)}
    from types import SimpleNamespace

    res = tune(gradient_descent, SimpleNamespace(**prompts), 3, {"eta": [0.1, 0.3, 1.0]}, maxfev=20, progress=True)
    assert 3 < res.evaluations <= 3 + 20
    final = err.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "tune gradient_descent" in final and f"{res.evaluations}/{res.evaluations}" in final
    assert "100%" in final


def test_progress_without_a_total_counts_without_eta():
    clock, lines = Clock(), []
    p = Progress(None, printer=lines.append, clock=clock)
    clock.t += 5
    p.finished("a", 5.0)
    assert lines == ["model 1 a done in 5s"] and p.eta() is None


def test_a_run_prints_one_line_per_trained_model_with_the_run_eta(tmp_path, capsys):
    """fit reports each trained model (all its seeds) to the run context: model k/N, its time, the run's ETA."""
    from experiments.common import RunContext
    from experiments.quickstart import QuickstartConfig
    from icl.prompts import PromptConfig, PromptDistribution
    from icl.training import ModelSpec, TrainConfig, fit

    ctx = RunContext(name="t", out_dir=tmp_path, quiet=False)
    ctx.expect_models(3)
    law = lambda st: PromptDistribution(PromptConfig(d=3, n=6), generator=st.generator("rotation"))  # noqa: E731
    cfg = TrainConfig(steps=5, batch_size=8, eval_batch=8, eval_every=5, log_every=5)
    for L in (1, 2):
        fit(ModelSpec("lsa", 3, {"layers": L}), law, cfg, [0, 1], store=ctx.store(QuickstartConfig()), tag=f"L{L}",
            quiet=True)  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("model ")]
    assert len(lines) == 2
    assert lines[0].startswith("model 1/3 L1 done in ") and "; run ETA " in lines[0]
    assert lines[1].startswith("model 2/3 L2 done in ") and "; run ETA " in lines[1]

"""Every study's ``--set train.*`` reaches what is trained (issue: three sources of truth for the learning rate).

Each study is run from the CLI on its quick profile with ``train.lr``, ``train.optimizer`` and ``train.steps``
set; the first training the study starts is recorded (its config, its optimizer instances and their learning
rates) and stopped there, so the test costs only what the study computes before it trains. The sweep studies
(outer_optimizers) choose their optimizers by their own fields, so ``train.optimizer`` is refused
there naming the field to use, and ``train.lr`` scales their learning-rate grids.
"""

from __future__ import annotations

import pytest
import torch

from experiments.cli import main
from icl.training import loop

#: study -> (the TrainConfig section the first trained model uses, extra --set to keep the run small; noisy_regression
#: scales train.* by depth unless depth_unit = 0, tested in its own study tests)
STUDIES = {
    "quickstart": ("train", ["test_prompts=200"]),
    "pgd_depth": ("train", ["tune_prompts=200", "tune_evals=1", "test_prompts=200", "depths=1"]),
    "memformer_vs_cgd": ("train", ["test_prompts=200", "tune_prompts=200", "depths=1", "settings=noniso"]),
    "gd_one_layer": ("train", []),
    "noisy_regression": ("train", ["test_prompts=200", "tune_prompts=200", "depths=1", "depth_unit=0"]),  # unscaled
    "newton_vs_gd": ("lsa_train", []),
    "outer_optimizers": ("train", ["test_prompts=200", "tune_prompts=200"]),
}
SWEEPS = ("outer_optimizers",)


class Recorded(Exception):
    pass


@pytest.fixture
def first_training(monkeypatch):
    seen = {}

    def run(self, *args, **kwargs):
        seen["cfg"] = self.cfg
        seen["optimizers"] = [type(o).__name__ for o in self.optimizers]
        seen["lrs"] = [lr for bases in self.base_lrs for lr in bases]
        raise Recorded

    monkeypatch.setattr(loop.Trainer, "run", run)
    return seen


def _run(study, section, extra, sets, tmp_path):
    args = ["run", study, "--quiet", "--out", str(tmp_path / "run")]
    args += ["--seed", "0"] if study == "quickstart" else ["--profile", "quick", "--seeds", "0"]
    for s in [*extra, *(f"{section}.{k}" for k in sets)]:
        args += ["--set", s]
    return main(args)


@pytest.mark.parametrize("study", list(STUDIES))
def test_set_train_lr_optimizer_and_steps_reach_the_trainer(study, tmp_path, first_training, capsys):
    section, extra = STUDIES[study]
    if study in SWEEPS:
        # adam, not sgd: the sweep sets train.betas, which TrainConfig refuses for sgd before the study speaks
        assert _run(study, section, extra, ["optimizer=adam"], tmp_path / "a") == 2
        assert "train.optimizer = 'adam' is not used by this study" in capsys.readouterr().err
        with pytest.raises(Recorded):
            _run(study, section, extra, ["steps=7"], tmp_path / "b")
        base = first_training["lrs"][0]
        assert first_training["cfg"].steps == 7
        with pytest.raises(Recorded):
            _run(study, section, extra, ["steps=7", "lr=0.02"], tmp_path / "c")
        assert first_training["lrs"][0] == pytest.approx(2 * base)  # lr scales the grid (given for lr = 0.01)
        return
    name, cls = ("adam", torch.optim.Adam) if study == "pgd_depth" else ("sgd", torch.optim.SGD)  # pgd_depth sets betas
    with pytest.raises(Recorded):
        _run(study, section, extra, ["lr=0.0123", f"optimizer={name}", "steps=7"], tmp_path)
    cfg = first_training["cfg"]
    assert cfg.steps == 7 and cfg.optimizer == name
    assert set(first_training["optimizers"]) == {cls.__name__}
    assert first_training["lrs"] and all(lr == pytest.approx(0.0123) for lr in first_training["lrs"])

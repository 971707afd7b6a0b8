"""Report helpers shared by the studies."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from experiments.reporting import dominated_by_few
from experiments.study import query_losses


def _rows(seed: int, errors: np.ndarray) -> list[dict]:
    """test_loss / test_loss_stderr rows of one seed, from the studies' own estimator (squared errors given)."""
    est = query_losses(torch.as_tensor(np.sqrt(errors)), SimpleNamespace(y_query=torch.zeros(len(errors))))
    return [
        dict(method="m", depth=4, seed=seed, metric="test_loss", value=est.mean),
        dict(method="m", depth=4, seed=seed, metric="test_loss_stderr", value=est.stderr),
    ]


def test_one_exploding_prompt_is_flagged_and_a_light_tail_is_not():
    rng = np.random.default_rng(0)
    typical = rng.chisquare(1, size=20_000) * 0.01  # squared Gaussian errors: s.e./mean ≈ √2/√M ≈ 1%
    exploded = typical.copy()
    exploded[123] = 1e6  # one prompt diverged
    rows = _rows(0, typical) + _rows(1, exploded)
    flagged = dominated_by_few(rows, "m", 4)
    assert [s for s, _, _ in flagged] == [1]
    seed, mean, se = flagged[0]
    assert abs(se / mean - 1) < 0.01  # one prompt of value V among M: mean ≈ s.e. ≈ V/M
    assert dominated_by_few(rows, "m", 4, floor=1e3) == []  # the floor excludes small means
    assert dominated_by_few(rows, "other", 4) == []


# -- paired verdicts, log-scale bands, coinciding curves -----------------------------------------------------------

T_975_2 = 4.302652729749464  # Student-t 97.5% quantile, 2 degrees of freedom (tables)


def test_paired_verdict_uses_the_t_interval_of_the_paired_differences():
    from experiments.reporting import paired_verdict

    a = {0: 2.0, 1: 3.0, 2: 4.0, 7: 100.0}  # seed 7 has no partner and is ignored
    b = {0: 1.0, 1: 1.0, 2: 1.0}
    vd = paired_verdict(a, b, "greater")
    half = T_975_2 * 1.0 / 3**0.5  # differences 1, 2, 3: mean 2, sd 1
    assert vd.count == 3 and abs(vd.mean - 2) < 1e-12
    assert abs(vd.lo - (2 - half)) < 1e-9 and abs(vd.hi - (2 + half)) < 1e-9
    assert vd.word == "undecided"  # the interval [−0.48, 4.48] straddles 0
    tight = paired_verdict({0: 1.0, 1: 1.1, 2: 0.9}, {0: 0.0, 1: 0.0, 2: 0.0}, "greater")
    assert tight.word == "holds" and tight.holds is True
    assert paired_verdict({0: 1.0, 1: 1.1, 2: 0.9}, {0: 0.0, 1: 0.0, 2: 0.0}, "less").word == "does not hold"
    assert paired_verdict({0: 0.01, 1: -0.01, 2: 0.0}, {0: 0.0, 1: 0.0, 2: 0.0}, "within", 0.1).word == "holds"


def test_one_pair_gives_no_verdict():
    from experiments.reporting import paired_verdict

    vd = paired_verdict({0: -5.0}, {0: 0.0}, "less")
    assert vd.word == "undecided" and vd.holds is None and "one seed" in vd.text()


def test_log_band_never_takes_the_log_of_a_non_positive_end():
    from experiments.reporting import log_band

    m, lo, hi = log_band(1.0, -3.0, 5.0, 3)  # a t-interval reaching below zero
    assert m == 0.0 and lo == -4.0 and hi == 4.0  # log(1) ∓ half/mean with half = 4


def test_coinciding_curves_are_found_and_distinct_ones_are_not():
    from experiments.reporting import coinciding

    curves = {"a": ([1, 2], [0.0, -1.0]), "b": ([1, 2], [0.005, -1.004]), "c": ([1, 2], [0.0, -1.5])}
    assert coinciding(curves) == [("a", "b")]


def test_a_band_cut_at_the_axes_is_said_to_be_in_the_caption(tmp_path, monkeypatch):
    """line_plot's y-limits follow the lines; a band that reaches past them is cut there, and only then does the
    caption say so (pgd_depth's GD++ gap band at L = 4 left the axes without a word)."""
    import experiments.reporting as reporting

    captions = []
    monkeypatch.setattr(reporting, "save_figure",
                        lambda fig, stem: captions.append(" ".join(t.get_text() for t in fig.texts)) or [])  # fmt: skip

    def rows(spread):
        return [dict(method="m", depth=L, seed=s, metric="gap", value=1.0 + L + spread * (s - 1) * (L == 3))
                for L in (1, 2, 3) for s in range(3)]  # fmt: skip

    reporting.line_plot(rows(0.01), tmp_path / "narrow", metric="gap", ylabel="gap", xlabel="L")
    reporting.line_plot(rows(50.0), tmp_path / "wide", metric="gap", ylabel="gap", xlabel="L")
    assert "cut at them" not in captions[0] and "cut at them" in captions[1]

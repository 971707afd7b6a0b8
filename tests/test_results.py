"""results.csv: real key columns on write, and the old packed format converted on read."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from experiments.results import COLUMNS, Rows, read_results, write_results


def _write_legacy(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "method", "depth", "seed", "metric", "value"])
        w.writerows(rows)


def test_rows_write_only_the_key_columns_in_use_and_read_back_typed(tmp_path):
    rows = Rows("pgd_depth")
    rows.add("sparse", 3, 1, "dist_sigma", 0.25, layer=2, train_step=200)
    rows.add("sparse", 3, 1, "test_loss", 0.5)
    rows.write(SimpleNamespace(out_dir=tmp_path))
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert header == ["experiment", "method", "depth", "layer", "train_step", "seed", "metric", "value"]
    back = read_results(tmp_path / "results.csv")
    assert set(back[0]) == set(COLUMNS)
    assert back[0]["layer"] == 2 and back[0]["train_step"] == 200 and back[0]["value"] == 0.25
    assert back[1]["layer"] is None and back[1]["setting"] is None


def test_unknown_column_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown result column"):
        Rows("x").add("m", 1, 0, "test_loss", 1.0, layr=1)
    with pytest.raises(ValueError, match="unknown result column"):
        write_results(tmp_path / "r.csv", [dict(experiment="x", method="m", depth=1, seed=0, metric="v", value=1.0,
                                                 bogus=1)])  # fmt: skip


@pytest.mark.parametrize(
    ("experiment", "method", "depth", "metric", "expect"),
    [
        ("pgd_depth", "sparse", 3, "dyn:dist_sigma:l2:t200",
         dict(method="sparse", depth=3, metric="dist_sigma", layer=2, train_step=200)),
        ("pgd_depth", "gdpp", 2, "b_scale:l1", dict(metric="b_scale", layer=1, train_step=None)),
        ("pgd_depth", "pgd_tuned", 3, "step_sorted:k3", dict(metric="step_sorted", k=3)),
        ("memformer_vs_cgd", "noniso:lfom_scalar_h5", 4, "test_loss",
         dict(setting="noniso", method="lfom_scalar_h5", depth=4)),
        ("noisy_regression", "U(0,1):full", 2, "adjusted_loss", dict(setting="U(0,1)", method="full")),
        ("baselines", "ahn_dutta/gd_schedule", 8, "hp:eta@3",
         dict(setting="ahn_dutta", method="gd_schedule", metric="hp:eta", k=3, depth=8)),
        ("outer_optimizers", "rf_adamw@0.009", 250, "val_loss",
         dict(method="rf_adamw", lr=0.009, train_step=250, depth=0)),
        ("outer_optimizers", "tuned_pgd_sigma_inv", 2, "step_size", dict(k=2, depth=3)),
        ("newton_vs_gd", "gpt:newton", 3, "sim_e@5", dict(method="gpt", reference="newton", layer=3, k=5, depth=0)),
        ("gd_one_layer", "gd_tuned", 1, "ood:a=0.2500", dict(metric="ood_half_mse", param=0.25)),
    ],
)  # fmt: skip
def test_old_packed_rows_are_converted(tmp_path, experiment, method, depth, metric, expect):
    _write_legacy(tmp_path / "results.csv", [[experiment, method, depth, 0, metric, 1.5]])
    (row,) = read_results(tmp_path / "results.csv", {"model": {"layers": 3}})
    for k, v in expect.items():
        assert row[k] == v, (k, row)
    assert row["value"] == 1.5 and row["seed"] == 0

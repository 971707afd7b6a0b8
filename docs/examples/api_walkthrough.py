"""Train a Memformer, probe it layer by layer against CG and preconditioned GD, plot its loss per layer.

The walkthrough of docs/api.md, as a script (tests/test_api_walkthrough.py runs it with the tiny settings):

    python docs/examples/api_walkthrough.py [--steps 2000] [--out walkthrough]

Conventions (token layout, read-out sign, loss, data law): docs/conventions.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import reference_optimizers as ro
from icl import ModelSpec, PromptConfig, PromptDistribution, Streams, TrainConfig, fit
from icl.plotting import plt, save_figure, set_theme
from learned_optimizers import LSAConfig, MemformerConfig, compare


def main(steps: int = 2000, layers: int = 3, test_prompts: int = 4000, out: str | Path = "walkthrough") -> dict:
    out = Path(out)
    # 1. The prompt law: Ahn et al.'s non-isotropic Σ (κ = 16), w* ~ N(0, Σ⁻¹), noiseless; every random draw
    #    comes from a named stream of one seed (rotation U, initialisation, training data, test data).
    streams = Streams(seed=0)
    law = PromptConfig(d=5, n=20, eigenvalues=(1.0, 1.0, 0.25, 0.0625, 1.0), w_prior="inverse_sigma")
    dist = PromptDistribution(law, generator=streams.generator("rotation"))

    # 2. A CGD-like Memformer (Dutta & Sra 2024): a sparse LSA per layer plus one memory register, as a spec
    #    (the model is built from the seed's `init` stream; a checkpoint stores the spec and rebuilds it).
    spec = ModelSpec("memformer", law.d, MemformerConfig(attention=LSAConfig(layers=layers, mode="sparse",
                                                                             init_std=0.01), memory="cgd"))

    # 3. Train it on fresh prompts of the law (query MSE, AdamW by default). fit trains one model per seed, all
    #    seeds as one stacked computation; here one seed.
    train = TrainConfig(steps=steps, batch_size=512, lr=0.01, eval_every=max(steps // 4, 1), log_every=50)
    fitted = fit(spec, [dist], train, [streams], quiet=True)
    model = fitted.runs[0].model.double().eval()

    # 4. Held-out prompts from the `test` stream (training never reads it), in float64.
    dist.dtype = torch.float64
    test = dist.sample(test_prompts, streams.generator("test"))

    # 5. The reference optimizers on exactly the same n context points: conjugate gradient, and Σ⁻¹-preconditioned
    #    GD with per-step sizes tuned on separate prompts of the law (the `tune` stream).
    tune_prompts = dist.sample(test_prompts, streams.generator("tune"))
    Sinv = torch.linalg.inv(dist.Sigma.double())
    tuned = ro.tune(ro.preconditioned_gd, tune_prompts, layers, {"eta": [0.5, 1.0, 1.5]}, per_step=("eta",),
                    fixed={"P": Sinv})  # fmt: skip
    eta = tuned.hyperparameters["eta"]
    references = {
        "conjugate gradient": ro.conjugate_gradient(test.X, test.y, layers),
        f"Σ⁻¹-preconditioned GD (steps tuned for {layers} steps)": ro.preconditioned_gd(
            test.X, test.y, layers, P=Sinv, eta=eta
        ),
    }

    # 6. Probe: every layer against every reference step (von Oswald et al.'s and Fu et al.'s similarities).
    probes = {name: compare(model, test, iterates) for name, iterates in references.items()}
    for name, c in probes.items():
        print(f"{name}:")
        for layer in range(1, layers + 1):
            print(f"  layer {layer}: loss {c.loss_model[layer]:.4f} vs step {layer} {c.loss_reference[layer]:.4f}, "
                  f"cosine of implicit weights {c.model_cosine[layer, layer]:.3f}, "
                  f"best-matching step (SimE) {int(c.best_step_sime[layer])}")  # fmt: skip

    # 7. Plot the loss per layer against the reference optimizers' loss per step.
    set_theme()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ks = list(range(layers + 1))
    c0 = next(iter(probes.values()))
    ax.plot(ks, c0.loss_model, "o-", label="trained Memformer (after layer ℓ)")
    for name, c in probes.items():
        ax.plot(ks, c.loss_reference, "s--", label=f"{name} (after step ℓ)")
    ax.set_yscale("log")
    ax.set_xticks(ks)
    ax.set_xlabel("layer ℓ / reference step")
    ax.set_ylabel("held-out query MSE")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ylim = ax.get_ylim()
    paths = save_figure(fig, out / "loss_per_layer")
    return {"loss_per_layer": c0.loss_model.tolist(), "probes": probes, "figure": paths[0], "ylim": ylim}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--test-prompts", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path("walkthrough"))
    a = parser.parse_args()
    result = main(a.steps, a.layers, a.test_prompts, a.out)
    print(f"figure: {result['figure']}")

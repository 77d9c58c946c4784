"""Figure: a filter-normalised random-direction loss surface (Li et al. 2018) around a trained
model, next to the plane through three independently trained models (Garipov et al. 2018).

    python analyses/surface.py --out results/surface [--model cnn1d] [--resolution 41] [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import landscape as ls
from landscape import connectivity, plot
from landscape.models import parse_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/surface")
    parser.add_argument("--model", default="cnn1d", help="zoo model spec, e.g. cnn1d or mlp:width=256")
    parser.add_argument("--resolution", type=int, default=41)
    parser.add_argument("--span", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    ls.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs, resolution, sizes = (
        (1, 5, {"n_train": 400, "n_test": 200}) if args.quick else (args.epochs, args.resolution, {})
    )
    data = ls.datasets.mnist1d(**sizes)
    spec = parse_spec(args.model)
    model = ls.models.create(spec.pop("name"), **spec)
    states = [
        ls.train(model, data, epochs=epochs, schedule="cosine", init_seed=s, data_seed=s, progress=False).state
        for s in range(3)
    ]
    test = {"test": data.test}
    random = connectivity.random_plane(model, states[0], test, span=args.span, resolution=resolution, seed=0)
    through = connectivity.plane(model, *states, test, resolution=resolution)
    ls.save_result({"random_plane": random, "plane": through}, out / "surface.nc")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    plot.surface(random, axes[0], log_levels=True)
    axes[0].set_title("around one model, random filter-normalised directions", fontsize="medium")
    plot.surface(through, axes[1], log_levels=True)
    axes[1].set_title("plane through three independently trained models", fontsize="medium")
    fig.savefig(out / "surface.png", dpi=150)
    centre = float(random.loss.sel(alpha=0, beta=0, method="nearest").squeeze())
    print(
        f"test loss at the model {centre:.3f}, max on the random plane {float(random.loss.max()):.2f}; "
        f"wrote {out / 'surface.nc'} and surface.png"
    )


if __name__ == "__main__":
    main()

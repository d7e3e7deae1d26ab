"""Training recipes for the all-digit model on the embedded data: held-out negative ELBO against training time.

Each recipe trains through the public training API on the embedded training pool (4,000 digits, 10 % held
out for validation) and is evaluated on the embedded test split (1,000 digits) with the runtime's Monte-Carlo
negative ELBO (K = 16, the same shared noise as a bundle's ``elbo`` score), in PyTorch.

Usage:
    python benchmarks/recipes.py            # all recipes, about 15 min here
    python benchmarks/recipes.py --smoke    # two tiny recipes: checks that the script runs

Writes benchmarks/results/recipes.json and the recipes section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import benchmark_parser, write_section  # noqa: E402  (a sibling script module)


def recipes(smoke: bool) -> dict[str, tuple[Any, Any]]:
    from functools import partial

    from edgevae.training import ModelConfig
    from edgevae.training import TrainConfig as _TrainConfig

    # the VAE alone: the recipes differ in how the VAE trains, and the defect head (trained after it) is not measured
    TrainConfig = partial(_TrainConfig, defect_head=False)  # noqa: N806

    if smoke:
        tiny = ModelConfig(latent_dim=4, widths=(8, 16), hidden=32).resolved()
        return {"tiny": (tiny, TrainConfig(epochs=1, augment_shift=0)),
                "tiny, shift 1 px": (tiny, TrainConfig(epochs=1, augment_shift=1))}
    base = ModelConfig().resolved()
    return {
        "30 epochs, batch 128 (first default)": (base, TrainConfig(epochs=30, batch_size=128, augment_shift=0)),
        "60 epochs, batch 64": (base, TrainConfig(epochs=60, batch_size=64, augment_shift=0)),
        "60 epochs, batch 64, shift 1 px": (base, TrainConfig(epochs=60, batch_size=64, augment_shift=1)),
        "150 epochs, batch 64, shift 1 px (default)": (base, TrainConfig(epochs=150, batch_size=64, augment_shift=1)),
        "150 epochs, batch 64, shift 2 px": (base, TrainConfig(epochs=150, batch_size=64, augment_shift=2)),
        "latent 32, hidden 512, 60 epochs, batch 64, shift 1 px": (
            ModelConfig(latent_dim=32, hidden=512).resolved(), TrainConfig(epochs=60, batch_size=64, augment_shift=1)),
        "refine 32 (full-resolution decoder conv), 150 epochs, batch 64, shift 1 px": (
            ModelConfig(refine=32).resolved(), TrainConfig(epochs=150, batch_size=64, augment_shift=1)),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = benchmark_parser(__doc__ or "", "recipes").parse_args(argv)

    import torch

    from edgevae.runtime.scores import prior_noise
    from edgevae.training import DataSpec, load_checkpoint, train
    from edgevae.training.data import embedded_split
    from edgevae.training.objectives import negative_elbo

    test_x, _ = embedded_split("test")
    x = torch.from_numpy(test_x[:, None].astype(np.float32) / 255)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgevae-recipes-") as tmp:
        for i, (name, (model_cfg, train_cfg)) in enumerate(recipes(args.smoke).items()):
            started = time.perf_counter()
            result = train(DataSpec(), Path(tmp) / f"run{i}", model_cfg, train_cfg)
            seconds = time.perf_counter() - started
            model = load_checkpoint(result.best_checkpoint).model.eval()
            eps = torch.from_numpy(prior_noise(16, model_cfg.latent_dim, 0).copy())
            with torch.no_grad():
                test = torch.cat([negative_elbo(model, x[s:s + 200], eps) for s in range(0, x.shape[0], 200)])
            rows.append({"recipe": name, "model": model_cfg.to_dict(), "train": asdict(train_cfg), "seconds": seconds,
                         "best_epoch": result.best_epoch, "val_neg_elbo": result.best_val_neg_elbo,
                         "test_neg_elbo": float(test.mean())})
            print(f"{name}: val {result.best_val_neg_elbo:.2f}, test {float(test.mean()):.2f} nats, {seconds:.0f} s",
                  flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    write_section("recipes", markdown(report), Path(args.markdown))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = ["## Training recipes for the all-digit model", "",
             f"Measured by `python benchmarks/recipes.py`, {report['date']}"
             + (" (smoke sizes: not meaningful)" if report["smoke"] else "") + ". Embedded training pool (3,600 "
             "images after the validation split), negative ELBO in nats per image (K = 16) on the validation split "
             "and on the 1,000-digit test split; training time on this shared 2-core machine.", "",
             "| recipe | best epoch | validation -ELBO | test -ELBO | training time (s) |", "|---|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {r['best_epoch']} | {r['val_neg_elbo']:.2f} | {r['test_neg_elbo']:.2f} | "
              f"{r['seconds']:.0f} |" for r in report["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

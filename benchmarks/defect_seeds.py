"""How much the defect head of a tiled run moves with its seed alone, and what averaging heads buys.

The tiled default's head alone (full resolution, the surface generator, ``SURFACE_HARD_NEGATIVES`` hard negatives,
``--steps`` steps, no time cap), trained from each of ``--seeds`` on ``SURFACE_HEAD_TILES`` random 64x64 tiles of
the tiles benchmark's training views (benchmarks/tiles.py: the same photographs, views and defects), then scored on
that benchmark's test views as a tiled bundle scores them: the largest logit over 64x64 tiles every 32 px. Image
AUROC per kind (spot, scratch, discoloured) against the test normals, for each head, for each pair of heads (the
mean of their logits, what ``train --defect-heads 2`` ships as one graph) and for all of them together.

No VAE, no export, no calibration: this isolates the head (docs/scoring.md, Several heads). With ``--labelled N``
the heads also train on N labelled defects per kind, the tiles benchmark's own (``tiles.labelled_folder``: views
of the photograph's training half, never its test half), read as ``train --labelled-defects`` reads them.

Usage:
    python benchmarks/defect_seeds.py                       # gravel and tissue, seeds 0,1,2 (about 35 min here)
    python benchmarks/defect_seeds.py --surfaces gravel --seeds 0,1
    python benchmarks/defect_seeds.py --labelled 5          # with 5 labelled defects per kind (train --labelled-defects)
    python benchmarks/defect_seeds.py --smoke               # tiny sizes: checks that it runs

Writes benchmarks/results/defect_head_seeds.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from edgevae.runtime.contract import InputContract
from edgevae.training.defect_head import SURFACE_HARD_NEGATIVES, HeadConfig, train_head
from edgevae.training.defects import SURFACE_DEFECTS
from edgevae.training.labelled import load_labelled
from edgevae.training.loop import SURFACE_HEAD_TILES
from edgevae.training.tiles import TileSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiles import KINDS, TASKS, labelled_folder, large_task  # noqa: E402  (a sibling script module)

ROOT = Path(__file__).resolve().parents[1]
TILE, STRIDE = 64, 32


def tile_logits(head: torch.nn.Module, images: np.ndarray, tile: int, stride: int) -> np.ndarray:
    """uint8 (N, H, W, C) images -> the head's logits on every tile, (N, tiles, tile, tile)."""
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    ys = range(0, x.shape[2] - tile + 1, stride)
    xs = range(0, x.shape[3] - tile + 1, stride)
    tiles = torch.stack([x[:, :, y:y + tile, z:z + tile] for y in ys for z in xs], 1)
    n, k = tiles.shape[:2]
    with torch.no_grad():
        z = torch.cat([head(b) for b in tiles.reshape(n * k, x.shape[1], tile, tile).split(256)])
    return z.reshape(n, k, tile, tile).numpy()


def aurocs(logits: dict[str, np.ndarray]) -> list[float]:
    """Image AUROC per kind: each image scored by its largest logit over all its tiles."""
    score = {k: v.reshape(len(v), -1).max(axis=1) for k, v in logits.items()}
    normal = score["normal"]
    return [round(float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(score[k]))],
                                      np.r_[normal, score[k]])), 4) for k in KINDS]


def surface(name: str, seeds: list[int], steps: int, smoke: bool,
            hard_negatives: int = SURFACE_HARD_NEGATIVES, labelled_per_kind: int = 0) -> dict[str, Any]:
    side, n_train, n_test = (64, 48, 12) if smoke else (192, 400, 100)
    # the tiles benchmark's own draws: the same counts, so the same views
    task = large_task(name, side, n_train, n_test, 12 if smoke else 200, 24 if smoke else 500)
    tile, stride = (32, 16) if smoke else (TILE, STRIDE)
    source = TileSource([v.transpose(2, 0, 1) for v in task.train], tile)
    tiles = source.draw(256 if smoke else SURFACE_HEAD_TILES, np.random.default_rng([0, 0]))
    sets = {"normal": task.normal, **{k: task.anomalies[k] for k in KINDS}}
    labelled = None
    if labelled_per_kind:
        with tempfile.TemporaryDirectory() as work:
            folder = labelled_folder(Path(work), name, side, labelled_per_kind)
            labelled = load_labelled(folder, InputContract(task.train.shape[-1], side, side), tile)
    logits, row = {}, {}
    for seed in seeds:
        started = time.perf_counter()
        result = train_head(torch.from_numpy(tiles), HeadConfig(
            channels=tiles.shape[1], resolution="full", defects=SURFACE_DEFECTS,
            hard_negatives=hard_negatives, seed=seed, steps=steps, batch_size=8 if smoke else 32,
            labelled=len(labelled.images) if labelled else 0), labelled=labelled)
        logits[seed] = {k: tile_logits(result.head, v, tile, stride) for k, v in sets.items()}
        row[f"single {seed}"] = aurocs(logits[seed])
        row[f"seconds {seed}"] = round(time.perf_counter() - started, 1)
        print(name, "seed", seed, row[f"single {seed}"], row[f"seconds {seed}"], "s", flush=True)
    for a, b in itertools.combinations(seeds, 2):
        row[f"mean {a}+{b}"] = aurocs({k: (logits[a][k] + logits[b][k]) / 2 for k in sets})
        print(name, "mean", a, b, row[f"mean {a}+{b}"], flush=True)
    if len(seeds) > 2:
        row["mean all"] = aurocs({k: sum(logits[s][k] for s in seeds) / len(seeds) for k in sets})
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--surfaces", default=",".join(TASKS), help="tiles benchmark tasks, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="head seeds, comma-separated")
    parser.add_argument("--steps", type=int, default=None, help="steps per head (default 3000; smoke 10)")
    parser.add_argument("--hard-negatives", type=int, default=SURFACE_HARD_NEGATIVES,
                        help="the heads' hard negatives per tile (default: the tiled default's)")
    parser.add_argument("--labelled", type=int, default=0,
                        help="labelled defects per kind the heads also train on (default 0: synthetic alone)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "defect_head_seeds.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    steps = args.steps or (10 if args.smoke else 3000)
    report: dict[str, Any] = {"kinds": list(KINDS), "seeds": seeds, "steps": steps, "smoke": args.smoke,
                              "hard_negatives": args.hard_negatives, "labelled_per_kind": args.labelled}
    for name in args.surfaces.split(","):
        report[name] = surface(name, seeds, steps, args.smoke, args.hard_negatives, args.labelled)
    report.update(date=time.strftime("%Y-%m-%d"), seconds=round(time.perf_counter() - started, 1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

"""Large images: a tiled bundle (``--tile``) against the resize path at the same training budget.

Tasks, built from photographs scikit-image ships (no downloads; seeds fixed): 256x256 views of

- ``gravel``: the ``gravel`` photograph (grayscale), a stationary texture;
- ``tissue``: the ``immunohistochemistry`` slide photograph (RGB), stained tissue.

Views are 192x192 (three tiles a side), each at a random place under one of the eight flips and quarter turns,
from two disjoint regions of the photograph: training views from the left half; calibration views, test normals
and anomalies from the right half, all drawn independently alike (so calibration and test normals are
exchangeable, as a user's normal images of one process are). Anomalies are test views with one small defect
(3-10 px; masks known): a ``spot``, a thin ``scratch``, a ``discoloured`` patch; their visibility is measured as in
benchmarks/real_images.py (the change over the defect's pixels against the local variation around it).
Overlapping views of one region share pixels, so the held-out views a run calibrates on at export are near
copies of its training views: both models are calibrated again with ``edgevae calibrate`` on the calibration
views, as a user calibrates on normal images of their own, and the false-positive rate is reported with either
(on more test normals than the AUROC uses: a 1 % rate needs hundreds).

Two models per task, both trained and exported by the command line at its defaults:

- **tiled**: ``edgevae train --tile 64`` on the views at their own size; scored by tiles
  (``Model.score_tiled``: 64x64 tiles every 32 px, the image score the largest tile score, calibrated on whole
  held-out views);
- **resize**: every view shrunk to 64x64 (bilinear, as ``edgevae train`` resizes image files), as edgevae did
  before tiles; trained for as many optimizer steps as the tiled model.

Measured: image AUROC per kind and method; pixel AUROC of the maps (the tiled maps at full resolution, the resize
path's maps enlarged back to 256x256); false-positive rate of the default at its stored 1 % threshold on the test
normals; throughput in megapixels per second, scored by tiles against the same tiles scored as one plain batch
(in alternating rounds); and the peak memory of a process that scores one 4096x4096 image (and its maps).

Usage:
    python benchmarks/tiles.py            # full run (about 25 min here)
    python benchmarks/tiles.py --smoke    # tiny sizes: checks that the pipeline runs
    python benchmarks/tiles.py --work DIR # keep the runs, the bundles and the views in DIR

Writes benchmarks/results/tiles.json and the tiles section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from edgevae.runtime import load
from edgevae.runtime.maps import defect_score
from edgevae.runtime.tiles import aggregate, image_tile_scores, stitch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import benchmark_parser, save_report  # noqa: E402  (sibling script modules)
from real_images import discolour_patch, photo, resize, run_measured, scratch, spot, to_uint8, visibility  # noqa: E402

METHODS = ("combined", "defect", "local", "smooth_recon", "elbo")
TASKS = {"gravel": ("gravel", 1), "tissue": ("immunohistochemistry", 3)}
KINDS = ("spot", "scratch", "discoloured")
# Global novelty: views of another task's photograph (in this task's channels), a different surface altogether.
OTHER = "other_surface"


@dataclass
class LargeTask:
    """uint8 (N, H, W, C) training views, test normals and anomalies (with masks) of one photograph."""

    name: str
    train: np.ndarray
    normal: np.ndarray
    calibration: np.ndarray  # normal views drawn as the test normals are, independently of them
    fpr_normal: np.ndarray  # more normal views drawn alike: the false-positive rate at the stored threshold
    other: np.ndarray | None = None  # views of another photograph (OTHER)
    anomalies: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    visibility: dict[str, float] = field(default_factory=dict)


def benchmark_defects() -> dict[str, Any]:
    """The defect kinds of the benchmark (KINDS): 3-6 px spots, 10-25 px 1-px scratches, 6-10 px patches."""
    return {"spot": spot(0.45, (3, 7)), "scratch": scratch(0.4, (10, 25)), "discoloured": discolour_patch((6, 11))}


def random_view(rng: np.random.Generator, part: np.ndarray, side: int, flip: bool = True) -> np.ndarray:
    """A ``side`` x ``side`` view of ``part`` at a random place, turned a random number of quarter turns and (with
    ``flip``) mirrored at random."""
    y = int(rng.integers(0, part.shape[0] - side + 1))
    x = int(rng.integers(0, part.shape[1] - side + 1))
    v = np.rot90(part[y:y + side, x:x + side], int(rng.integers(4)))
    return np.ascontiguousarray(v[:, ::-1] if flip and rng.integers(2) else v)


def labelled_folder(work: Path, task_name: str, side: int, per_kind: int, seed: int = 1) -> Path:
    """A user's few labelled defects: ``per_kind`` new views of the photograph's *training* half (never the test
    half) per kind, each with one defect of that kind, written as PNG files with ``NAME_mask.png`` masks."""
    source, channels = TASKS[task_name]
    rng = np.random.default_rng(10_000 + seed)
    img = photo(source)[..., :channels]
    part = img[:, : img.shape[1] // 2]
    folder = work / f"{task_name}_labelled_{per_kind}"
    folder.mkdir(parents=True, exist_ok=True)
    for kind, defect in benchmark_defects().items():
        for i in range(per_kind):
            out, mask = defect(rng, random_view(rng, part, side, flip=False))
            pixels = to_uint8([out])[0]
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(folder / f"{kind}{i}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{kind}{i}_mask.png")
    return folder


def large_task(name: str, side: int, n_train: int, n_test: int, n_calibration: int, n_fpr: int,
               seed: int = 0) -> LargeTask:
    """Views of ``side`` x ``side`` from two disjoint regions of the task's photograph: the left half (training)
    and the right half (calibration views, test normals, anomalies and the false-positive views, drawn alike)."""
    source, channels = TASKS[name]
    rng = np.random.default_rng(seed)
    img = photo(source)[..., :channels]
    w = img.shape[1]
    train_part, test_part = img[:, : w // 2], img[:, w // 2:]

    def view(part: np.ndarray) -> np.ndarray:
        return random_view(rng, part, side)

    task = LargeTask(name, to_uint8([view(train_part) for _ in range(n_train)]),
                     to_uint8([view(test_part) for _ in range(n_test)]),
                     calibration=to_uint8([view(test_part) for _ in range(n_calibration)]),
                     fpr_normal=to_uint8([view(test_part) for _ in range(n_fpr)]))
    defects = benchmark_defects()
    for kind in KINDS:
        pairs = [(v, *defects[kind](rng, v)) for v in (view(test_part) for _ in range(n_test))]
        task.anomalies[kind] = to_uint8([p[1] for p in pairs])
        task.masks[kind] = np.stack([p[2] for p in pairs])
        task.visibility[kind] = float(np.median([visibility(b, a, m) for b, a, m in pairs]))
    other = [n for n in TASKS if n != name]
    if other:
        src = photo(TASKS[other[0]][0])
        src = src[:, src.shape[1] // 2:]
        if channels == 1:
            src = src.mean(axis=2, keepdims=True)
        task.other = to_uint8([view(src) for _ in range(n_test)])
    return task


# ------------------------------------------------------------------------------------------- models
def train_and_export(work: Path, task: LargeTask, name: str, extra: list[str],
                     images: np.ndarray | None = None) -> tuple[Any, dict[str, float]]:
    """Train and export with the command line on ``images`` (default: the task's training views)."""
    data = work / f"{task.name}_{name}.npy"
    np.save(data, task.train if images is None else images)
    cli = [str(Path(sys.executable).with_name("edgevae"))]
    run_dir, bundle = work / f"run_{task.name}_{name}", work / f"bundle_{task.name}_{name}"
    train_s, train_mb = run_measured(cli + ["train", "--data", str(data), "-o", str(run_dir), *extra])
    export_s, export_mb = run_measured(cli + ["export", str(run_dir), "-o", str(bundle), "--force"])
    model = load(bundle, ["CPUExecutionProvider"])
    training = model.manifest.raw["training"]
    steps = math.ceil(training["n_train"] / training["train_config"]["batch_size"]) * training["epochs"]
    return model, {"train_seconds": train_s, "train_peak_mb": train_mb, "export_seconds": export_s,
                   "export_peak_mb": export_mb, "steps": steps,
                   "bundle_mb": sum(e["bytes"] for e in model.manifest.files.values()) / 1e6}


def calibrate(work: Path, task: LargeTask, bundle: Path) -> float:
    """``edgevae calibrate`` the bundle on the task's calibration views, written as PNG files (the resize path's
    bundle resizes them as it resizes any file, the tiled one reads them at their own size); seconds taken."""
    folder = work / f"{task.name}_calibration"
    if not folder.exists():
        folder.mkdir()
        for i, v in enumerate(task.calibration):
            Image.fromarray(v[..., 0] if v.shape[-1] == 1 else v).save(folder / f"{i:04d}.png")
    cli = [str(Path(sys.executable).with_name("edgevae"))]
    seconds, _ = run_measured(cli + ["calibrate", str(bundle), str(folder)])
    return seconds


def tiled_scores(model: Any, images: np.ndarray, methods: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Each method's image score (the largest tile score) of uint8 (N, H, W, C) images."""
    out: dict[str, list[float]] = {m: [] for m in methods}
    for img in images:
        chw = np.moveaxis(img, -1, 0)
        grid = model.tiling.grid(chw.shape[1], chw.shape[2])
        scores = image_tile_scores(model, chw, grid, methods)
        for m in methods:
            out[m].append(aggregate(scores[m]))
    return {m: np.asarray(v) for m, v in out.items()}


def shrunk(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, size, size), bilinear (what the resize path's contract does)."""
    return np.stack([np.moveaxis(resize(img.astype(np.float32) / 255.0, size), -1, 0) for img in images])


def resize_scores(model: Any, images: np.ndarray, methods: tuple[str, ...]) -> dict[str, np.ndarray]:
    x = shrunk(images, model.contract.height)
    return {m: np.concatenate([model.raw_scores(x[i:i + 256], m) for i in range(0, len(x), 256)]) for m in methods}


def pixel_auroc(maps: list[np.ndarray], masks: np.ndarray) -> float:
    return float(roc_auc_score(masks.reshape(-1), np.stack(maps).reshape(-1)))


def tiled_maps(model: Any, images: np.ndarray, which: str) -> list[np.ndarray]:
    return [model.tiled_maps(np.moveaxis(img, -1, 0))[which] for img in images]


def resize_maps(model: Any, images: np.ndarray, which: str) -> list[np.ndarray]:
    """The resize path's maps enlarged back to the images' size (bilinear)."""
    x = shrunk(images, model.contract.height)
    maps = model.defect_map(x) if which == "defect" else model.anomaly_map(x)
    side = images.shape[1]
    return [resize(m[..., None].astype(np.float32), side)[..., 0] for m in maps]


def stitched_defect(model: Any, images: np.ndarray) -> np.ndarray:
    """A design alternative for the tiled ``defect`` score: the defect score of the stitched full-resolution logit
    map (tiles averaged where they overlap) instead of the largest of the tiles' own defect scores."""
    out = []
    for img in images:
        chw = np.moveaxis(img, -1, 0)
        logits = stitch(chw, model.tiling.grid(chw.shape[1], chw.shape[2]), model.defect_logits)
        out.append(float(defect_score(logits[None], model.spec.defect_window)[0]))
    return np.asarray(out)


def default_fpr(model: Any, images: np.ndarray, tiled: bool) -> float:
    """The default method's false-positive rate at the bundle's stored threshold on normal ``images``."""
    default = model.spec.default_method
    scores = (tiled_scores if tiled else resize_scores)(model, images, (default,))[default]
    thr = model.tiling.calibration.methods[default].threshold if tiled else model.manifest.calibration[default].threshold
    return float(np.mean(scores > thr))


def equal_shares(model: Any, images: np.ndarray) -> np.ndarray:
    """The image scores of ``combined`` read with equal shares of its parts (the rule before part weights), from
    the same bundle: the largest tile score of each uint8 (N, H, W, C) image."""
    equal = model.with_maps(model.maps, replace(model.combination, weights=None))
    out = []
    for img in images:
        chw = np.moveaxis(img, -1, 0)
        grid = model.tiling.grid(*chw.shape[1:])
        out.append(aggregate(image_tile_scores(equal, chw, grid, ("combined",))["combined"]))
    return np.asarray(out)


def evaluate(task: LargeTask, model: Any, tiled: bool) -> dict[str, Any]:
    methods = tuple(m for m in METHODS if m in model.computable_methods)
    score = tiled_scores if tiled else resize_scores
    normal = score(model, task.normal, methods)
    weighted = tiled and model.combination is not None and model.combination.weights is not None
    if weighted:
        normal["combined_equal"] = equal_shares(model, task.normal)
    if tiled and model.has_defect_head:
        normal["defect_stitched"] = stitched_defect(model, task.normal)
    auroc: dict[str, dict[str, float]] = {}
    pixel: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        bad = score(model, task.anomalies[kind], methods)
        if weighted:
            bad["combined_equal"] = equal_shares(model, task.anomalies[kind])
        if "defect_stitched" in normal:
            bad["defect_stitched"] = stitched_defect(model, task.anomalies[kind])
        y = np.r_[np.zeros(len(task.normal)), np.ones(len(task.anomalies[kind]))]
        auroc[kind] = {m: float(roc_auc_score(y, np.r_[normal[m], bad[m]])) for m in normal}
        maps = tiled_maps if tiled else resize_maps
        pixel[kind] = {w: pixel_auroc(maps(model, task.anomalies[kind], w), task.masks[kind])
                       for w in ("anomaly", "defect") if w == "anomaly" or model.has_defect_head}
    if task.other is not None:
        bad = score(model, task.other, methods)
        if weighted:
            bad["combined_equal"] = equal_shares(model, task.other)
        y = np.r_[np.zeros(len(task.normal)), np.ones(len(task.other))]
        auroc[OTHER] = {m: float(roc_auc_score(y, np.r_[normal[m], bad[m]])) for m in (*methods, "combined_equal")
                        if m in bad}
    default = model.spec.default_method
    if tiled:
        thr = model.tiling.calibration.methods[default].threshold
    else:
        thr = model.manifest.calibration[default].threshold
    fpr_scores = score(model, task.fpr_normal, (default,))[default]
    return {"auroc": auroc, "pixel_auroc": pixel, "fpr_at_stored": float(np.mean(fpr_scores > thr)),
            "fpr_images": len(task.fpr_normal)}


def throughput(model: Any, images: np.ndarray, rounds: int = 3) -> dict[str, float]:
    """Megapixels per second of the default scored by tiles (``Model.score_tiled_many``, as ``edgevae score`` and
    ``BatchScorer`` do), against the same tiles cut beforehand and scored as plain batches of 256; best of
    ``rounds`` alternating rounds."""
    method = model.spec.default_method
    chw = [np.moveaxis(img, -1, 0) for img in images]
    grid = model.tiling.grid(chw[0].shape[1], chw[0].shape[2])
    tiles = np.concatenate([t for img in chw for _, t in grid.batches(img)])
    prepared = model.prepare(tiles)
    by_tiles, plain = [], []
    model.score_tiled_many(chw[:2], method)  # warm-up
    for _ in range(rounds):
        t = time.perf_counter()
        model.score_tiled_many(chw, method)
        by_tiles.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(0, len(prepared), 256):
            model.raw_scores(prepared[i:i + 256], method)
        plain.append(time.perf_counter() - t)
    mp = sum(img.shape[1] * img.shape[2] for img in chw) / 1e6
    return {"megapixels": mp, "tiles": int(len(tiles)), "by_tiles_mp_s": mp / min(by_tiles),
            "plain_batch_mp_s": mp / min(plain), "ratio": min(plain) / min(by_tiles)}


PEAK_SCRIPT = """
import sys, time
import numpy as np

def hwm():  # this process's own peak resident memory (MB); ru_maxrss would count the parent's at fork
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024


from edgevae.runtime import load
model = load(sys.argv[1], ["CPUExecutionProvider"])
side = int(sys.argv[2])
source = np.load(sys.argv[3])[0]
reps = -(-side // source.shape[0])
image = np.ascontiguousarray(np.moveaxis(np.tile(source, (reps, reps, 1))[:side, :side], -1, 0))
before = hwm()
t = time.perf_counter(); r = model.score_tiled(image); seconds = time.perf_counter() - t
after_score = hwm()
model.tiled_maps(image)
after_maps = hwm()
print(before / 2**20, after_score / 2**20, after_maps / 2**20, seconds, r.tiles)
"""


def peak_memory(bundle: Path, data: Path, side: int) -> dict[str, float]:
    """Peak resident memory (MB) of a fresh process that loads the bundle, then scores one ``side`` x ``side``
    image by tiles, then makes its maps."""
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(bundle), str(side), str(data)],
                          capture_output=True, text=True, check=True)
    loaded, scored, mapped, seconds, tiles = (float(v) for v in proc.stdout.split())
    return {"side": side, "loaded_mb": loaded, "after_score_mb": scored, "after_maps_mb": mapped,
            "score_seconds": seconds, "tiles": int(tiles)}


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__ or "", "tiles")
    parser.add_argument("--tasks", default=",".join(TASKS), help="tasks to run")
    parser.add_argument("--labelled", type=int, default=5,
                        help="also train a tiled model whose defect head sees this many labelled defects per kind, "
                             "made on views of the training half (0: leave that model out)")
    parser.add_argument("--train-args", default="",
                        help="more `edgevae train` options for the tiled and labelled models, one string (for "
                             "instance \"--defect-widths 24,48,96 --no-defect-time-cap\"); recorded in the report")
    parser.add_argument("--work", help="keep the runs, the bundles and the views in this folder (default: a "
                                       "temporary one)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    side, tile, n_train, n_test, n_cal, n_fpr = (64, 32, 48, 12, 12, 24) if args.smoke else (192, 64, 400, 100, 200, 500)
    epochs = ["--epochs", "2", "--defect-steps", "20"] if args.smoke else []
    extra = shlex.split(args.train_args)
    report: dict[str, Any] = {"tasks": {}, "side": side, "tile": tile, "n_calibration": n_cal,
                              **({"train_args": extra} if extra else {})}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.tasks.split(","):
            task = large_task(name, side, n_train, n_test, n_cal, n_fpr)
            if args.work:
                np.savez(work / f"{name}_task.npz", normal=task.normal, fpr_normal=task.fpr_normal,
                         **{f"anomaly_{k}": v for k, v in task.anomalies.items()},
                         **{f"mask_{k}": v for k, v in task.masks.items()},
                         **({"other": task.other} if task.other is not None else {}))
            print(f"== {name}: {len(task.train)} training views {task.train.shape[1:]}", flush=True)
            tiled, tiled_cost = train_and_export(work, task, "tiled", ["--tile", str(tile), *epochs, *extra])
            steps = tiled_cost["steps"]
            n_fit = len(task.train) - round(len(task.train) * tiled.manifest.raw["training"]["train_config"]["val_fraction"])
            per_epoch = math.ceil(n_fit / 64)
            resize_epochs = ["--epochs", str(max(1, round(steps / per_epoch)))] if not args.smoke else epochs
            small = np.clip(np.rint(shrunk(task.train, tile) * 255), 0, 255).astype(np.uint8)  # as files are resized
            resized, resize_cost = train_and_export(work, task, "resize", resize_epochs, small)
            before = {"tiled": default_fpr(tiled, task.fpr_normal, True),
                      "resize": default_fpr(resized, task.fpr_normal, False)}
            for label in ("tiled", "resize"):
                seconds = calibrate(work, task, work / f"bundle_{task.name}_{label}")
                (tiled_cost if label == "tiled" else resize_cost)["calibrate_seconds"] = seconds
            tiled = load(work / f"bundle_{task.name}_tiled", ["CPUExecutionProvider"])
            resized = load(work / f"bundle_{task.name}_resize", ["CPUExecutionProvider"])
            row: dict[str, Any] = {"visibility": task.visibility, "n_normal": len(task.normal),
                                   "tiled": {**evaluate(task, tiled, True), "cost": tiled_cost,
                                             "fpr_export_calibration": before["tiled"]},
                                   "resize": {**evaluate(task, resized, False), "cost": resize_cost,
                                              "fpr_export_calibration": before["resize"]}}
            if args.labelled:
                folder = labelled_folder(work, name, side, 1 if args.smoke else args.labelled)
                _, labelled_cost = train_and_export(work, task, "labelled", ["--tile", str(tile), "--labelled-defects",
                                                                             str(folder), *epochs, *extra])
                labelled_cost["calibrate_seconds"] = calibrate(work, task, work / f"bundle_{name}_labelled")
                labelled = load(work / f"bundle_{name}_labelled", ["CPUExecutionProvider"])
                row["labelled"] = {**evaluate(task, labelled, True), "cost": labelled_cost,
                                   "per_kind": 1 if args.smoke else args.labelled}
            row["tiled"]["combined_parts"] = list(tiled.spec.combined_parts)
            row["resize"]["combined_parts"] = list(resized.spec.combined_parts)
            row["tiled"]["throughput"] = throughput(tiled, task.normal[: 8 if args.smoke else 40])
            sample = work / f"{name}_sample.npy"
            np.save(sample, task.normal[:1])
            row["tiled"]["peak"] = peak_memory(work / f"bundle_{name}_tiled", sample, 256 if args.smoke else 4096)
            report["tasks"][name] = row
            print(json.dumps({k: v for k, v in row.items() if k != "visibility"}, default=str)[:1500], flush=True)
    save_report("tiles", report, markdown, args, started)
    return report


def _fmt(v: float) -> str:
    return f"{v:.3f}"


def markdown(report: dict[str, Any]) -> str:
    lines = ["## Large images by tiles", "",
             f"Measured by `python benchmarks/tiles.py` on {report['machine']}, {report['date']}; total "
             f"{report['seconds'] / 60:.1f} min. Raw results: `benchmarks/results/tiles.json`." + (
                 f" The tiled models trained with `{' '.join(report['train_args'])}`." if report.get("train_args") else "") + (
                 " **Smoke run (tiny sizes): the figures mean nothing.**" if report.get("smoke") else "") + (
                 f" {report['note']}" if report.get("note") else ""), "",
             f"{report['side']}x{report['side']} views of two photographs, from two disjoint regions (training: the "
             f"left half; calibration with `edgevae calibrate` and test: the right half, drawn independently alike), "
             f"under flips and quarter turns; anomalies are test views with one defect of 3-10 px, and (`{OTHER}`, global "
             f"novelty, image AUROC only) views of the other photograph in this one's channels. `combined_equal` "
             f"(tiled only) is the default's parts read with equal shares of the false-alarm budget, the rule before "
             f"part weights (docs/scoring.md), from the same bundle. `defect_stitched` "
             f"(tiled only) is a design alternative: the defect score of the stitched full-resolution logit map instead "
             f"of the largest tile score. **tiled**: `edgevae train --tile {report['tile']}` at the views' own size, scored by "
             f"{report['tile']}x{report['tile']} tiles every {report['tile'] // 2} px (image score: the largest tile "
             f"score, calibrated on whole held-out views). **resize**: every view shrunk to {report['tile']}x{report['tile']} "
             "(bilinear, as image files are), trained for as many optimizer steps. Both at the other defaults.", ""]
    for name, row in report["tasks"].items():
        t, r = row["tiled"], row["resize"]
        methods = [m for m in (*METHODS, "combined_equal", "defect_stitched") if m in t["auroc"][KINDS[0]]]
        lines += [f"### {name}", "", "Image AUROC per defect kind (tiled / resize):", "",
                  "| kind | visibility | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        for kind in (k for k in (*KINDS, OTHER) if k in t["auroc"]):
            cells = [f"{_fmt(t['auroc'][kind].get(m, float('nan')))} / {_fmt(r['auroc'][kind].get(m, float('nan')))}"
                     for m in methods]
            seen = f"{row['visibility'][kind]:.2f}" if kind in row["visibility"] else "-"
            lines.append(f"| {kind} | {seen} | " + " | ".join(cells) + " |")
        lines += ["", "Pixel AUROC of the maps (tiled at full resolution / resize enlarged back):", "",
                  "| kind | anomaly map | defect map |", "|---|---|---|"]
        for kind in KINDS:
            tp, rp = t["pixel_auroc"][kind], r["pixel_auroc"][kind]
            lines.append(f"| {kind} | {_fmt(tp['anomaly'])} / {_fmt(rp['anomaly'])} | "
                         f"{_fmt(tp.get('defect', float('nan')))} / {_fmt(rp.get('defect', float('nan')))} |")
        if "labelled" in row:
            lb = row["labelled"]
            lines += ["", f"With **{lb['per_kind']} labelled defects per kind** (`edgevae train --tile "
                          f"{report['tile']} --labelled-defects DIR`: {lb['per_kind']} views of the training half per kind, "
                          f"each with one defect of that kind and its mask; the test views come from the other half), "
                          f"image AUROC and the defect map's pixel AUROC (labelled / synthetic alone, the tiled model "
                          f"above):", "", "| kind | combined | defect | defect map pixel AUROC |", "|---|---|---|---|"]
            for kind in (k for k in (*KINDS, OTHER) if k in lb["auroc"]):
                cells = [f"{_fmt(lb['auroc'][kind].get(m, float('nan')))} / "
                         f"{_fmt(t['auroc'][kind].get(m, float('nan')))}" for m in ("combined", "defect")]
                pix = (f"{_fmt(lb['pixel_auroc'][kind].get('defect', float('nan')))} / "
                       f"{_fmt(t['pixel_auroc'][kind].get('defect', float('nan')))}") if kind in KINDS else "-"
                lines.append(f"| {kind} | " + " | ".join(cells) + f" | {pix} |")
            lines += ["", f"False-positive rate of its `combined` at the stored 1 % (calibrated as above): "
                          f"{100 * lb['fpr_at_stored']:.1f} % of {lb['fpr_images']}. Training "
                          f"{lb['cost']['train_seconds']:.0f} s, export {lb['cost']['export_seconds']:.0f} s."]
        tp, pk = t["throughput"], t["peak"]
        if "combined_parts" in t:
            lines += ["", f"`combined` joins {', '.join(t['combined_parts'])} (tiled) and "
                          f"{', '.join(r['combined_parts'])} (resize)."]
        lines += ["", f"- False-positive rate of the default (`combined`) at its stored 1 % threshold on "
                      f"{t.get('fpr_images', row['n_normal'])} test normals, calibrated by `edgevae calibrate` on "
                      f"{report.get('n_calibration', row['n_normal'])} other normal views: "
                      f"tiled {100 * t['fpr_at_stored']:.1f} %, resize {100 * r['fpr_at_stored']:.1f} % (with the "
                      f"export's calibration on held-out training views: {100 * t['fpr_export_calibration']:.1f} % "
                      f"and {100 * r['fpr_export_calibration']:.1f} %).",
                  f"- Throughput of the default by tiles: {tp['by_tiles_mp_s']:.2f} MP/s against {tp['plain_batch_mp_s']:.2f} "
                  f"MP/s for the same {tp['tiles']} tiles cut beforehand and scored as plain batches: "
                  f"**{tp['ratio']:.2f}x**.",
                  f"- One {pk['side']}x{pk['side']} image ({pk['tiles']} tiles): scored in {pk['score_seconds']:.1f} s; "
                  f"peak resident memory of the process {pk['after_score_mb']:.0f} MB after scoring, "
                  f"{pk['after_maps_mb']:.0f} MB after its maps ({pk['loaded_mb']:.0f} MB with the bundle loaded).",
                  f"- Training: tiled {t['cost']['train_seconds']:.0f} s, resize {r['cost']['train_seconds']:.0f} s "
                  f"({t['cost']['steps']} / {r['cost']['steps']} VAE steps); export {t['cost']['export_seconds']:.0f} s / "
                  f"{r['cost']['export_seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""A fixed camera by tiles: per-position map statistics against position-free ones, on one run.

The task, built from the ``coins`` photograph scikit-image ships (no downloads; seeds fixed): a camera that looks
at the same tray of coins in every frame. A frame is the 192x192 region at (60, 120) of the photograph, moved by
up to one pixel each way (a rig's vibration), with a gain of 0.9-1.1, an offset of +-0.03 and sensor noise
(sd 0.015). Anomalies are new frames with one small defect (3-10 px; masks known), drawn as in
benchmarks/tiles.py: a ``spot``, a thin ``scratch``, a ``discoloured`` patch, anywhere in the frame.

One run (``edgevae train --tile 64`` at its defaults, on the training frames), exported three times:

- **fixed**: ``edgevae export`` at its defaults (``--camera auto``, which is expected to choose a fixed camera
  from the frames, the report records what it chose; ``--align-radius 2``): each frame aligned to the scene,
  its anomaly map standardised per pixel by the aligned statistics moved by its shift;
- **unaligned**: ``edgevae export --camera fixed --align-radius 0``: per pixel of the frame where it falls;
- **surface**: ``edgevae export --camera surface``: the statistics of a tile, the same at every position.

The frames a run holds out are independent frames of the same process, so both exports' own calibrations
apply as they are; but a run holds out 100 frames, and a threshold at 1 % read off 100 scores varies by about its
own size from draw to draw. So each bundle is also calibrated again with ``edgevae calibrate`` on 300 new
normal frames, as a user would before deploying.

Measured: image AUROC per kind and method, pixel AUROC of the stitched maps, the default's false-positive
rate at its stored 1 % threshold on 500 new normal frames, with the export's calibration and after
``edgevae calibrate``, and the default's throughput by tiles (``Model.score_tiled_many``) against the same tiles
cut beforehand and scored as plain batches (``benchmarks/tiles.py``'s measure; a fixed camera's tiles also
stitch and standardise the frame's map, which the plain batches do not).

Another scene (``--scene camera``: the 192x192 region at (120, 180) of scikit-image's ``camera`` photograph, a
man with a tripod in front of buildings) checks that what is measured on coins is not a property of that one
scene; its report goes to benchmarks/results/fixed_camera_camera.json and a section of its own.

Usage:
    python benchmarks/fixed_camera.py            # full run
    python benchmarks/fixed_camera.py --scene camera  # the same on another scene
    python benchmarks/fixed_camera.py --smoke    # tiny sizes: checks that the pipeline runs
    python benchmarks/fixed_camera.py --work DIR # keep the run, the bundles and the frames in DIR

Writes benchmarks/results/fixed_camera.json and the fixed-camera section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from edgevae.runtime import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import benchmark_parser, save_report  # noqa: E402  (sibling script modules)
from real_images import discolour_patch, photo, run_measured, scratch, spot, to_uint8, visibility  # noqa: E402
from tiles import KINDS, pixel_auroc, stitched_defect, throughput, tiled_maps, tiled_scores  # noqa: E402

METHODS = ("combined", "defect", "local", "smooth_recon", "elbo")
# scene: (scikit-image photograph, top-left corner of the frame in it)
SCENES = {"coins": ("coins", (60, 120)), "camera": ("camera", (120, 180))}


def frames(rng: np.random.Generator, n: int, side: int, scene_name: str = "coins") -> list[np.ndarray]:
    """``n`` float (side, side, 1) frames of the fixed scene, each with its own shift, gain, offset and noise."""
    name, origin = SCENES[scene_name]
    scene = photo(name)[..., :1]
    out = []
    for _ in range(n):
        dy, dx = (int(v) for v in rng.integers(-1, 2, 2))
        y, x = origin[0] + dy, origin[1] + dx
        view = scene[y:y + side, x:x + side] * rng.uniform(0.9, 1.1) + rng.uniform(-0.03, 0.03)
        out.append(np.clip(view + rng.normal(0, 0.015, view.shape), 0, 1).astype(np.float32))
    return out


def build(side: int, n_train: int, n_test: int, n_fpr: int, n_calibration: int, seed: int = 0,
          scene: str = "coins") -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    task: dict[str, Any] = {"train": to_uint8(frames(rng, n_train, side, scene)),
                            "normal": to_uint8(frames(rng, n_test, side, scene)),
                            "fpr_normal": to_uint8(frames(rng, n_fpr, side, scene)),
                            "calibration": to_uint8(frames(rng, n_calibration, side, scene)), "anomalies": {},
                            "masks": {}, "visibility": {}}
    defects = {"spot": spot(0.45, (3, 7)), "scratch": scratch(0.4, (10, 25)), "discoloured": discolour_patch((6, 11))}
    for kind in KINDS:
        pairs = [(v, *defects[kind](rng, v)) for v in frames(rng, n_test, side, scene)]
        task["anomalies"][kind] = to_uint8([p[1] for p in pairs])
        task["masks"][kind] = np.stack([p[2] for p in pairs])
        task["visibility"][kind] = float(np.median([visibility(b, a, m) for b, a, m in pairs]))
    return task


def evaluate(task: dict[str, Any], model: Any) -> dict[str, Any]:
    methods = tuple(m for m in METHODS if m in model.computable_methods)
    normal = tiled_scores(model, task["normal"], methods)
    if model.has_defect_head:
        normal["defect_stitched"] = stitched_defect(model, task["normal"])
    auroc: dict[str, dict[str, float]] = {}
    pixel: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        bad = tiled_scores(model, task["anomalies"][kind], methods)
        if "defect_stitched" in normal:
            bad["defect_stitched"] = stitched_defect(model, task["anomalies"][kind])
        y = np.r_[np.zeros(len(task["normal"])), np.ones(len(task["anomalies"][kind]))]
        auroc[kind] = {m: float(roc_auc_score(y, np.r_[normal[m], bad[m]])) for m in normal}
        pixel[kind] = {w: pixel_auroc(tiled_maps(model, task["anomalies"][kind], w), task["masks"][kind])
                       for w in ("anomaly", "defect") if w == "anomaly" or model.has_defect_head}
    return {"auroc": auroc, "pixel_auroc": pixel, "fpr_at_stored": fpr_at_stored(task, model),
            "fpr_images": len(task["fpr_normal"]), "positional": bool(model.tiling.positional),
            "calibration_frames": model.tiling.calibration.n}


def fpr_at_stored(task: dict[str, Any], model: Any) -> float:
    """The default's false-positive rate at its stored image-level threshold on the task's 500 normal frames."""
    default = model.spec.default_method
    thr = model.tiling.calibration.methods[default].threshold
    return float(np.mean(tiled_scores(model, task["fpr_normal"], (default,))[default] > thr))


def calibrated_again(task: dict[str, Any], bundle: Path, work: Path) -> float:
    """``edgevae calibrate`` the bundle on the task's calibration frames (PNG files); seconds taken."""
    folder = work / "calibration_frames"
    if not folder.exists():
        folder.mkdir()
        for i, v in enumerate(task["calibration"]):
            Image.fromarray(v[..., 0]).save(folder / f"{i:04d}.png")
    cli = [str(Path(sys.executable).with_name("edgevae"))]
    seconds, _ = run_measured(cli + ["calibrate", str(bundle), str(folder)])
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__ or "", "fixed_camera")
    parser.add_argument("--work", help="keep the run, the bundles and the frames in this folder (default: a temporary "
                        "one, removed at the end)")
    parser.add_argument("--scene", choices=sorted(SCENES), default="coins", help="the fixed scene (default: coins)")
    args = parser.parse_args(argv)
    name = "fixed_camera" if args.scene == "coins" else f"fixed_camera_{args.scene}"
    if args.scene != "coins" and args.json == parser.get_default("json"):
        args.json = str(Path(args.json).with_name(f"{name}.json"))
    started = time.perf_counter()
    side, tile, n_train, n_test, n_fpr, n_cal = (64, 32, 48, 12, 24, 12) if args.smoke else (192, 64, 400, 100, 500, 300)
    epochs = ["--epochs", "2", "--defect-steps", "20"] if args.smoke else []
    task = build(side, n_train, n_test, n_fpr, n_cal, scene=args.scene)
    report: dict[str, Any] = {"scene": args.scene, "side": side, "tile": tile, "n_train": n_train, "n_normal": n_test,
                              "visibility": task["visibility"], "exports": {}}
    cli = [str(Path(sys.executable).with_name("edgevae"))]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.work:
            np.savez(work / "task.npz", normal=task["normal"], fpr_normal=task["fpr_normal"],
                     calibration=task["calibration"], **{f"anomaly_{k}": v for k, v in task["anomalies"].items()})
        data, run = work / "frames.npy", work / "run"
        np.save(data, task["train"])
        train_s, _ = run_measured(cli + ["train", "--data", str(data), "-o", str(run), "--tile", str(tile), *epochs])
        report["train_seconds"] = train_s
        for label, extra in (("fixed", []), ("unaligned", ["--camera", "fixed", "--align-radius", "0"]),
                             ("surface", ["--camera", "surface"])):
            bundle = work / f"bundle_{label}"
            seconds, _ = run_measured(cli + ["export", str(run), "-o", str(bundle), "--force", *extra])
            model = load(bundle, ["CPUExecutionProvider"])
            t = time.perf_counter()
            row = {**evaluate(task, model), "export_seconds": seconds, "options": " ".join(extra) or "defaults",
                   "aligned": model.positional is not None and model.positional.alignment is not None}
            row["evaluate_seconds"] = time.perf_counter() - t
            row["throughput"] = throughput(model, task["normal"][: 8 if args.smoke else 40])
            row["calibrate_seconds"] = calibrated_again(task, bundle, work)
            model = load(bundle, ["CPUExecutionProvider"])
            row["fpr_after_calibrate"] = fpr_at_stored(task, model)
            row["recalibration_frames"] = model.tiling.calibration.n
            report["exports"][label] = row
            print(label, json.dumps(row, default=str)[:1500], flush=True)
    save_report(name, report, markdown, args, started)
    return report


def markdown(report: dict[str, Any]) -> str:
    ex = report["exports"]
    labels = [k for k in ("fixed", "unaligned", "surface") if k in ex]
    scene = report.get("scene", "coins")
    option = "" if scene == "coins" else f" --scene {scene}"
    heads = {"fixed": "fixed camera, aligned (defaults)", "unaligned": "fixed, `--align-radius 0`",
             "surface": "`--camera surface`"}
    lines = [f"## A fixed camera by tiles (`benchmarks/fixed_camera.py{option}`, {report['date']})", "",
             f"One tiled run ({report['tile']}x{report['tile']} tiles) on {report['n_train']} frames of "
             f"{report['side']}x{report['side']} of one scene (the `{scene}` photograph, moved by up to 1 px, gain, offset "
             "and noise per frame), exported at the defaults (`--camera auto`, which chose "
             f"{'a fixed camera' if ex['fixed']['positional'] else 'a surface'}; each frame aligned to the scene within "
             "2 px), with per-position statistics read where the frame falls (`--align-radius 0`) and with "
             f"position-free ones (`--camera surface`). Image AUROC on {report['n_normal']} normal frames against as "
             "many with one 3-10 px defect; the false-positive rate of the default at its stored 1 % threshold on "
             f"{ex['fixed']['fpr_images']} new normal frames. {report['seconds'] / 60:.1f} min on {report['machine']}"
             + (" (smoke sizes)." if report["smoke"] else "."), "",
             "| kind (visibility) | method | " + " | ".join(heads[k] for k in labels) + " |",
             "|---|---|" + "---|" * len(labels)]

    def row(first: str, cells: list[str]) -> None:
        lines.append(f"| {first} | " + " | ".join(cells) + " |")

    for kind in KINDS:
        for m in ex["fixed"]["auroc"][kind]:
            row(f"{kind} ({report['visibility'][kind]:.1f}) | {m}", [f"{ex[k]['auroc'][kind][m]:.3f}" for k in labels])
    for kind in KINDS:
        for w in ex["fixed"]["pixel_auroc"][kind]:
            row(f"{kind} | pixel AUROC, {w} map", [f"{ex[k]['pixel_auroc'][kind][w]:.3f}" for k in labels])
    row(f"normal | FPR at the stored 1 %, export's calibration ({ex['fixed']['calibration_frames']} held-out frames)",
        [f"{ex[k]['fpr_at_stored']:.1%}" for k in labels])
    row(f"normal | FPR at the stored 1 % after `edgevae calibrate` on {ex['fixed']['recalibration_frames']} new frames",
        [f"{ex[k]['fpr_after_calibrate']:.1%}" for k in labels])
    if "throughput" in ex["fixed"]:
        row(" | default by tiles, MP/s (against the same tiles as plain batches)",
            [f"{ex[k]['throughput']['by_tiles_mp_s']:.2f} ({ex[k]['throughput']['ratio']:.2f}x of "
             f"{ex[k]['throughput']['plain_batch_mp_s']:.2f})" for k in labels])
    row(" | export seconds", [f"{ex[k]['export_seconds']:.0f}" for k in labels])
    return "\n".join(lines) + "\n\n"


if __name__ == "__main__":
    main()

"""Real-image benchmark: edgevae on photographs that scikit-image ships (no downloads), against pixel baselines.

Tasks (all images are built here from the photographs in ``skimage.data``; seeds fixed):

- ``inspection``: one fixed scene, as a camera sees it — a region of the ``coffee`` photograph, 64x64 RGB, with
  shifts of up to 2 pixels, exposure jitter and sensor noise as normal. Anomalies: local defects of the kinds in
  public inspection data sets (a foreign object pasted from another photograph, a scratch, a stain, a local blur,
  a dead sensor row or column) with known pixel masks, and global ones (over- and under-exposure, another scene).
- ``texture_<name>``: unaligned 64x64 patches of one texture photograph (``grass``, ``gravel``; grayscale) as
  normal. Anomalies: small, moderate-contrast defects (a spot of a few pixels, a 1-pixel scratch,
  a discoloured patch; masks known) and patches of the other textures (of ``grass``, ``gravel``, ``brick``).
- ``photos``: crops of several photographs at random scales, resized to 64x64 RGB, as normal (what a new user
  tries first). Anomalies: the local defects above on normal crops, and crops of photographs never trained on.
- ``faces``: ``lfw_subset`` (25x25 grayscale): 70 faces train, 30 faces and the 100 non-face patches test,
  over several random splits.

Every edgevae model is trained and exported with the command line at its defaults (``edgevae train --data
X.npy``; ``edgevae export``), which also measures training time, peak memory and bundle size; the plain
autoencoder (``--plain``) is trained beside it on the inspection task. Baselines on the same training images: 5-nearest-
neighbour distance on pixels, One-Class SVM and Isolation Forest (scikit-learn), PyOD's VAE. The ``iwae`` score
is left out here (256 decoder passes per image). A 256x256 RGB model is trained, exported and scored once to
show that large inputs fit this machine.

Usage:
    python benchmarks/real_images.py            # full run (about 45 min here)
    python benchmarks/real_images.py --smoke    # tiny sizes: checks that the pipeline runs

Writes benchmarks/results/real_images.json and the real-images section of docs/benchmarks.md.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import OneClassSVM

from edgevae.runtime import load
from edgevae.runtime.options import DEFECT_WINDOW

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import benchmark_parser, save_report  # noqa: E402  (a sibling script module)

METHODS = ("combined", "defect", "local", "elbo", "too_likely", "kl", "recon", "rel_recon", "smooth_recon")
# The default before the defect head, recomputed from the same bundle's references (the columns "without the head").
PREVIOUS_PARTS = ("local", "smooth_recon", "elbo")
# Leave-one-family-out: the generator family left out, and the benchmark kinds it resembles most.
LEFT_OUT = {"line": ("scratch", "dead_line"), "blur": ("local_blur",), "other_image": ("foreign_object",),
            "brightness": ("spot", "discoloured", "stain")}
LOFO_STEPS = 600
SMOKE_DEFECT_STEPS = 20  # a smoke run's defect heads: enough steps to run every path, nothing to measure
BASELINES = ("knn_pixels", "one_class_svm", "isolation_forest", "pyod_vae")
Defect = Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]


# ------------------------------------------------------------------------------------------- source photographs
def photo(name: str) -> np.ndarray:
    """A scikit-image photograph as float32 (H, W, 3) in [0, 1] (grayscale ones repeated to three channels)."""
    from skimage import data

    img = np.asarray(getattr(data, name)(), dtype=np.float32) / 255.0
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) float in [0, 1] -> (size, size, C), Pillow bilinear per channel."""
    chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
             for c in range(img.shape[2])]
    return np.clip(np.stack(chans, axis=2), 0.0, 1.0)


def crop(img: np.ndarray, y: int, x: int, side: int, size: int) -> np.ndarray:
    return resize(img[y:y + side, x:x + side], size)


def random_crop(rng: np.random.Generator, img: np.ndarray, size: int, scales: tuple[int, int]) -> np.ndarray:
    side = int(rng.integers(scales[0], min(scales[1], img.shape[0], img.shape[1]) + 1))
    y, x = (int(rng.integers(0, img.shape[i] - side + 1)) for i in (0, 1))
    return crop(img, y, x, side, size)


# ------------------------------------------------------------------------------------------- defects
def _disc(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def foreign_object(donor: np.ndarray) -> Defect:
    """Paste an irregular piece (6-12 px) of another photograph."""
    def apply(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, r = img.shape[0], int(rng.integers(3, 7))
        cy, cx = (int(rng.integers(r + 2, n - r - 2)) for _ in range(2))
        piece = random_crop(rng, donor, n, (n, 3 * n))
        mask = _disc(n, cy, cx, r, r * rng.uniform(0.6, 1.4))
        out = img.copy()
        out[mask] = piece[mask][:, : img.shape[2]]
        return out, mask
    return apply


def scratch(contrast: float, length: tuple[int, int] = (15, 35), width: int = 1) -> Defect:
    """A straight line ``width`` pixels wide, brighter or darker by ``contrast``."""
    def apply(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = img.shape[0]
        steps = int(rng.integers(*length))
        angle = rng.uniform(0, np.pi)
        y0, x0 = rng.uniform(n * 0.2, n * 0.8, size=2)
        t = np.linspace(-steps / 2, steps / 2, 4 * steps)
        ys = np.clip(np.round(y0 + t * np.sin(angle)).astype(int), 0, n - 1)
        xs = np.clip(np.round(x0 + t * np.cos(angle)).astype(int), 0, n - 1)
        mask = np.zeros((n, n), bool)
        mask[ys, xs] = True
        if width > 1:
            mask = ndimage.binary_dilation(mask, iterations=width - 1)
        out = img.copy()
        out[mask] = np.clip(out[mask] + rng.choice([-1, 1]) * contrast, 0, 1)
        return out, mask
    return apply


def stain(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A soft, darker, brownish blob of radius 3-7."""
    n, r = img.shape[0], rng.uniform(3, 7)
    cy, cx = rng.uniform(r + 1, n - r - 1, size=2)
    yy, xx = np.mgrid[:n, :n]
    weight = np.clip(1.2 - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r, 0, 1)[..., None]
    tint = np.array([0.55, 0.4, 0.25][: img.shape[2]], np.float32)
    out = img * (1 - 0.6 * weight) + 0.6 * weight * tint * img.mean(axis=2, keepdims=True)
    return np.clip(out, 0, 1), weight[..., 0] > 0.2


def local_blur(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 14x14 region blurred (Gaussian, sigma 2 px)."""
    n, s = img.shape[0], 14
    y, x = (int(rng.integers(4, n - s - 4)) for _ in range(2))
    out = img.copy()
    out[y:y + s, x:x + s] = ndimage.gaussian_filter(img, sigma=(2, 2, 0))[y:y + s, x:x + s]
    mask = np.zeros((n, n), bool)
    mask[y:y + s, x:x + s] = True
    return out, mask


def dead_line(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One sensor row or column stuck dark or bright."""
    n, k = img.shape[0], int(rng.integers(4, img.shape[0] - 4))
    mask = np.zeros((n, n), bool)
    if rng.random() < 0.5:
        mask[k, :] = True
    else:
        mask[:, k] = True
    out = img.copy()
    out[mask] = float(rng.choice([0.0, 1.0]))
    return out, mask


def spot(contrast: float, sizes: tuple[int, int] = (3, 6)) -> Defect:
    """A square spot of 3-5 pixels (``sizes``: [low, high)), brighter or darker by ``contrast``."""
    def apply(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, s = img.shape[0], int(rng.integers(*sizes))
        y, x = (int(rng.integers(2, n - s - 2)) for _ in range(2))
        out = img.copy()
        out[y:y + s, x:x + s] = np.clip(out[y:y + s, x:x + s] + rng.choice([-1, 1]) * contrast, 0, 1)
        mask = np.zeros((n, n), bool)
        mask[y:y + s, x:x + s] = True
        return out, mask
    return apply


def discolour(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An 8-12 pixel patch shifted in brightness by 0.12-0.18 (and in tint, for colour images)."""
    n, s = img.shape[0], int(rng.integers(8, 13))
    y, x = (int(rng.integers(2, n - s - 2)) for _ in range(2))
    shift = rng.uniform(0.12, 0.18) * rng.choice([-1, 1]) * np.array([1.0, 0.8, 0.5][: img.shape[2]], np.float32)
    out = img.copy()
    out[y:y + s, x:x + s] = np.clip(out[y:y + s, x:x + s] + shift, 0, 1)
    mask = np.zeros((n, n), bool)
    mask[y:y + s, x:x + s] = True
    return out, mask


def flat(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image's mean colour everywhere (a blank frame, an empty slide)."""
    return np.broadcast_to(img.mean(axis=(0, 1), keepdims=True), img.shape).copy(), np.ones(img.shape[:2], bool)


def nearly_uniform(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image blurred away (Gaussian, sigma 8 px) with faint sensor noise: out of focus, fogged."""
    out = ndimage.gaussian_filter(img, sigma=(8, 8, 0)) + rng.normal(0, 0.01, img.shape)
    return np.clip(out, 0, 1).astype(np.float32), np.ones(img.shape[:2], bool)


def visibility(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> float:
    """How visible a defect is against its texture: the mean absolute change over the defect's pixels divided by
    the standard deviation of the normal image in the 16 x 16 window around the defect (its local variation)."""
    ys, xs = np.nonzero(mask)
    cy, cx = int(ys.mean()), int(xs.mean())
    window = before[max(0, cy - 8):cy + 8, max(0, cx - 8):cx + 8]
    change = np.abs(after[mask] - before[mask]).mean()
    return float(change / max(float(window.std()), 1e-6))


def discolour_patch(sizes: tuple[int, int] = (10, 15), shift: float = 0.3) -> Defect:
    """A square patch (side in ``sizes``: [low, high)) brighter or darker by ``shift``."""
    def apply(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, s = img.shape[0], int(rng.integers(*sizes))
        y, x = (int(rng.integers(2, n - s - 2)) for _ in range(2))
        out = img.copy()
        out[y:y + s, x:x + s] = np.clip(out[y:y + s, x:x + s] + shift * rng.choice([-1, 1]), 0, 1)
        mask = np.zeros((n, n), bool)
        mask[y:y + s, x:x + s] = True
        return out, mask
    return apply


# A 10-14 pixel patch shifted in brightness by 0.3.
discolour_strong = discolour_patch()


def exposure(factor: float) -> Defect:
    def apply(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.clip(img * factor, 0, 1), np.ones(img.shape[:2], bool)
    return apply


# ------------------------------------------------------------------------------------------- tasks
@dataclass
class Task:
    """Normal training and test images and labelled anomalies (uint8 (N, H, W, C)), with masks where known."""

    name: str
    train: np.ndarray
    normal: np.ndarray
    anomalies: dict[str, np.ndarray]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    local_kinds: tuple[str, ...] = ()
    visibility: dict[str, float] = field(default_factory=dict)  # median visibility of each local kind


def to_uint8(images: list[np.ndarray]) -> np.ndarray:
    return np.clip(np.rint(np.stack(images) * 255), 0, 255).astype(np.uint8)


def _apply(rng: np.random.Generator, normals: list[np.ndarray], defect: Defect) -> tuple[np.ndarray, np.ndarray, float]:
    pairs = [defect(rng, img) for img in normals]
    seen = float(np.median([visibility(img, p[0], p[1]) for img, p in zip(normals, pairs) if p[1].any()]))
    return to_uint8([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), seen


def _with_defects(rng: np.random.Generator, task: Task, base: Callable[[], np.ndarray], n: int,
                  defects: dict[str, Defect], local: bool) -> None:
    for kind, defect in defects.items():
        task.anomalies[kind], masks, seen = _apply(rng, [base() for _ in range(n)], defect)
        if local:
            task.masks[kind] = masks
            task.visibility[kind] = seen
    if local:
        task.local_kinds += tuple(defects)


def _with_simpler(rng: np.random.Generator, task: Task, base: Callable[[], np.ndarray], n: int) -> None:
    """Images simpler than the normal ones: blank (flat) and nearly uniform."""
    _with_defects(rng, task, base, n, {"flat": flat, "nearly_uniform": nearly_uniform}, local=False)


def inspection(size: int, n_train: int, n_test: int, seed: int = 0) -> Task:
    rng = np.random.default_rng(seed)
    scene, others = photo("coffee"), [photo("chelsea"), photo("rocket")]
    side = 2 * size  # the camera's field of view in the photograph's pixels; 2 px of shift at the output size

    def view(img: np.ndarray = scene, y0: int = 110, x0: int = 180) -> np.ndarray:
        dy, dx = (int(rng.integers(-4, 5)) for _ in range(2))
        v = crop(img, y0 + dy, x0 + dx, side, size)
        v = v * rng.uniform(0.9, 1.1) + rng.uniform(-0.03, 0.03)
        return np.clip(v + rng.normal(0, 0.01, v.shape), 0, 1).astype(np.float32)

    task = Task("inspection", to_uint8([view() for _ in range(n_train)]), to_uint8([view() for _ in range(n_test)]), {})
    _with_defects(rng, task, view, n_test, {"foreign_object": foreign_object(photo("astronaut")),
                                            "scratch": scratch(0.35), "stain": stain, "local_blur": local_blur,
                                            "dead_line": dead_line}, local=True)
    _with_defects(rng, task, view, n_test, {"over_exposed": exposure(1.7), "under_exposed": exposure(0.35)}, local=False)
    _with_simpler(rng, task, view, n_test)
    task.anomalies["other_scene"] = to_uint8([
        view(others[i % 2], int(rng.integers(0, 100)), int(rng.integers(0, 200))) for i in range(n_test)])
    return task


def texture(name: str, size: int, n_train: int, n_test: int, seed: int = 0) -> Task:
    rng = np.random.default_rng(seed)
    names = ("grass", "gravel", "brick")
    img = photo(name)[..., :1]
    cut = int(img.shape[0] * 0.75)  # training patches from the top three quarters, test patches from the rest
    patch = lambda src, lo, hi: src[(y := int(rng.integers(lo, hi - size))):y + size,  # noqa: E731
                                    (x := int(rng.integers(0, src.shape[1] - size))):x + size]
    task = Task(f"texture_{name}", to_uint8([patch(img, 0, cut) for _ in range(n_train)]),
                to_uint8([patch(img, cut, img.shape[0]) for _ in range(n_test)]), {})
    _with_defects(rng, task, lambda: patch(img, cut, img.shape[0]), n_test,
                  {"spot": spot(0.25), "scratch": scratch(0.2, (20, 40)), "discoloured": discolour}, local=True)
    # the same kinds, small but visible (visibility, the change against the local variation, about 2 or more)
    _with_defects(rng, task, lambda: patch(img, cut, img.shape[0]), n_test,
                  {"spot_visible": spot(0.5, (5, 8)), "scratch_visible": scratch(0.45, (20, 40), width=2),
                   "discoloured_visible": discolour_strong}, local=True)
    _with_simpler(rng, task, lambda: patch(img, cut, img.shape[0]), n_test)
    others = [photo(o)[..., :1] for o in names if o != name]
    task.anomalies["other_texture"] = to_uint8([patch(others[i % 2], 0, 512) for i in range(n_test)])
    return task


NORMAL_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera")
OTHER_PHOTOS = ("retina", "colorwheel", "coins", "moon", "text")


def photos(size: int, n_train: int, n_test: int, seed: int = 0) -> Task:
    rng = np.random.default_rng(seed)
    normal, other = [photo(n) for n in NORMAL_PHOTOS], [photo(n) for n in OTHER_PHOTOS]
    draw = lambda pool: random_crop(rng, pool[int(rng.integers(len(pool)))], size, (48, 220))  # noqa: E731
    task = Task("photos", to_uint8([draw(normal) for _ in range(n_train)]), to_uint8([draw(normal) for _ in range(n_test)]), {})
    _with_defects(rng, task, lambda: draw(normal), n_test,
                  {"foreign_object": foreign_object(photo("astronaut")), "scratch": scratch(0.35), "stain": stain,
                   "spot": spot(0.35)}, local=True)
    task.anomalies["other_photos"] = to_uint8([draw(other) for _ in range(n_test)])
    _with_simpler(rng, task, lambda: draw(normal), n_test)
    return task


def faces(split: int) -> Task:
    from skimage import data

    lfw = np.clip(np.rint(data.lfw_subset() * 255), 0, 255).astype(np.uint8)[..., None]  # faces first, then non-faces
    order = np.random.default_rng(split).permutation(100)
    return Task(f"faces_{split}", lfw[order[:70]], lfw[order[70:]], {"non_faces": lfw[100:]})


# ------------------------------------------------------------------------------------------- running
def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Run a command; (seconds, peak resident memory in MB of the command's process tree's largest process)."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "sys.stderr.write(r.stderr[-3000:] if r.returncode else ''); sys.exit(r.returncode)")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    seconds, kb = proc.stdout.split()
    return float(seconds), float(kb) / 1024


def edgevae_model(task: Task, work: Path, extra: list[str], epochs: int | None,
                  export_extra: list[str] | None = None,
                  defect_steps: int | None = None) -> tuple[Any, dict[str, float]]:
    """Train and export with the command line; the loaded bundle and the cost figures. ``defect_steps`` (None: the
    default) trains the defect head for that many steps."""
    data = work / f"{task.name}.npy"
    np.save(data, task.train)
    cli = [str(Path(sys.executable).with_name("edgevae"))]
    run_dir, bundle = work / f"run_{task.name}{''.join(extra)}", work / f"bundle_{task.name}{''.join(extra)}"
    train_s, train_mb = run_measured(cli + ["train", "--data", str(data), "-o", str(run_dir), *extra]
                                     + (["--epochs", str(epochs)] if epochs else [])
                                     + (["--defect-steps", str(defect_steps)] if defect_steps else []))
    export_s, export_mb = run_measured(cli + ["export", str(run_dir), "-o", str(bundle), "--force", *(export_extra or [])])
    model = load(bundle, ["CPUExecutionProvider"])
    files = model.manifest.files
    size = sum(e["bytes"] for e in files.values()) / 1e6
    head = (model.manifest.defect.raw.get("training") or {}) if model.manifest.defect is not None else {}
    return model, {"train_seconds": train_s, "train_peak_mb": train_mb, "export_seconds": export_s,
                   "export_peak_mb": export_mb, "bundle_mb": size,
                   "defect_onnx_mb": files["defect.onnx"]["bytes"] / 1e6 if "defect.onnx" in files else 0.0,
                   "vae_seconds": model.manifest.raw["training"]["seconds"],
                   "defect_seconds": head.get("seconds"), "defect_steps": head.get("steps"),
                   "val_neg_elbo": model.manifest.raw["training"]["val_neg_elbo"]}


def export_only(work: Path, task: Task, extra: list[str]) -> tuple[Any, dict[str, float]]:
    """The task's default run exported again with other options; the loaded bundle and its cost figures."""
    cli = [str(Path(sys.executable).with_name("edgevae"))]
    bundle = work / f"bundle_{task.name}_reexported"
    export_s, export_mb = run_measured(cli + ["export", str(work / f"run_{task.name}"), "-o", str(bundle), "--force", *extra])
    model = load(bundle, ["CPUExecutionProvider"])
    return model, {"export_seconds": export_s, "export_peak_mb": export_mb,
                   "bundle_mb": sum(e["bytes"] for e in model.manifest.files.values()) / 1e6}


def previous_default(model: Any, x: np.ndarray) -> np.ndarray:
    """The default before the defect head (``PREVIOUS_PARTS`` joined through their p-values), from this bundle's
    own references: what the bundle would score without its head and its ``too_likely`` part."""
    from edgevae.runtime.maps import Combination

    refs = model.manifest.calibration_section.references
    combo = Combination(PREVIOUS_PARTS, {p: refs[p] for p in PREVIOUS_PARTS})
    return np.concatenate([combo.statistic({p: model.raw_scores(x[i:i + 256], p) for p in PREVIOUS_PARTS})
                           for i in range(0, x.shape[0], 256)])


def edgevae_scores(model: Any, x: np.ndarray, methods: tuple[str, ...] = METHODS) -> dict[str, np.ndarray]:
    out = {m: np.concatenate([model.raw_scores(x[i:i + 256], m) for i in range(0, x.shape[0], 256)])
           for m in methods if m in model.computable_methods}
    if "combined" in methods and "combined_previous" not in out and model.has_defect_head:
        out["combined_previous"] = previous_default(model, x)
    return out


def baseline_scores(train: np.ndarray, tests: dict[str, np.ndarray], use_pyod: bool) -> dict[str, dict[str, np.ndarray]]:
    a = train.reshape(train.shape[0], -1).astype(np.float32) / 255
    flat = {k: v.reshape(v.shape[0], -1).astype(np.float32) / 255 for k, v in tests.items()}
    knn = NearestNeighbors(n_neighbors=5).fit(a)
    detectors: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "knn_pixels": lambda b: knn.kneighbors(b)[0].mean(axis=1),
        "one_class_svm": (svm := OneClassSVM(gamma="scale").fit(a)) and (lambda b: -svm.score_samples(b)),
        "isolation_forest": (iso := IsolationForest(random_state=0).fit(a)) and (lambda b: -iso.score_samples(b)),
    }
    if use_pyod:
        from pyod.models.vae import VAE as PyodVAE

        pyod = PyodVAE(random_state=0, verbose=0)
        stdout, sys.stdout = sys.stdout, io.StringIO()
        try:
            pyod.fit(a)
        finally:
            sys.stdout = stdout
        detectors["pyod_vae"] = pyod.decision_function
    return {name: {k: np.asarray(f(b), np.float64) for k, b in flat.items()} for name, f in detectors.items()}


def evaluate(task: Task, model: Any, use_pyod: bool, plain: Any | None) -> dict[str, Any]:
    """AUROC per anomaly kind and method, map pixel-AUROC, and the default's false-positive rate at its threshold."""
    sets = {"normal": task.normal, **task.anomalies}
    ours = {k: edgevae_scores(model, v) for k, v in sets.items()}
    theirs = baseline_scores(task.train, sets, use_pyod)
    plain_scores = {k: edgevae_scores(plain, v, ("combined", "local", "recon")) for k, v in sets.items()} if plain else {}

    def auroc(scores: dict[str, np.ndarray], kind: str) -> float:
        neg, pos = scores["normal"], scores[kind]
        return float(roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos]))

    out: dict[str, Any] = {"auroc": {}, "pixel_auroc": {}, "defect_pixel_auroc": {}, "visibility": task.visibility}
    for kind in task.anomalies:
        row = {m: auroc({k: v[m] for k, v in ours.items()}, kind) for m in ours["normal"]}
        row.update({b: auroc(theirs[b], kind) for b in theirs})
        row.update({f"plain_{m}": auroc({k: v[m] for k, v in plain_scores.items()}, kind)
                    for m in ("combined", "local", "recon") if plain_scores})
        out["auroc"][kind] = row
    for kind in task.local_kinds:
        maps = np.concatenate([model.anomaly_map(task.normal), model.anomaly_map(task.anomalies[kind])])
        truth = np.concatenate([np.zeros((len(task.normal),) + task.masks[kind].shape[1:], bool), task.masks[kind]])
        out["pixel_auroc"][kind] = float(roc_auc_score(truth.ravel(), maps.ravel()))
        if model.has_defect_head:
            heads = np.concatenate([model.defect_logits(task.normal), model.defect_logits(task.anomalies[kind])])
            out["defect_pixel_auroc"][kind] = float(roc_auc_score(truth.ravel(), heads.ravel()))
    out["fpr_at_threshold"] = float((ours["normal"]["combined"] > model.threshold("combined")).mean())
    return out


def leave_one_family_out(task: Task, steps: int, seed: int = 0) -> list[dict[str, Any]]:
    """Defect heads trained on this task's images with every generator family and with one family left out
    (``LEFT_OUT``), each for ``steps`` steps; the ``defect`` score's AUROC on the benchmark kinds the family
    resembles. Heads are trained in process (no VAE: the head reads the image alone) and scored with the runtime's
    own ``defect_score``."""
    import torch

    from edgevae.runtime.maps import defect_score
    from edgevae.training.defect_head import HeadConfig, train_head
    from edgevae.training.defects import DefectConfig

    def unit(u8: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(u8.transpose(0, 3, 1, 2).astype(np.float32) / 255)

    x = unit(task.train)
    base = HeadConfig(channels=x.shape[1], steps=steps, seed=seed)
    families = {f: kinds for f, kinds in LEFT_OUT.items() if any(k in task.anomalies for k in kinds)}
    rows: list[dict[str, Any]] = []
    heads = {"all": train_head(x, base).head}
    for family in families:
        heads[family] = train_head(x, replace(base, defects=DefectConfig().without(family))).head

    def scores(head: Any, u8: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return defect_score(head(unit(u8)).numpy(), DEFECT_WINDOW)

    normal = {name: scores(h, task.normal) for name, h in heads.items()}
    for family, kinds in families.items():
        for kind in (k for k in kinds if k in task.anomalies):
            auc = {name: float(roc_auc_score(np.r_[np.zeros(len(task.normal)), np.ones(len(task.anomalies[kind]))],
                                             np.r_[normal[name], scores(heads[name], task.anomalies[kind])]))
                   for name in ("all", family)}
            rows.append({"task": task.name, "left_out": family, "kind": kind, "all_families": auc["all"],
                         "without": auc[family], "steps": steps})
    return rows


def throughput(model: Any, previous: Any, x: np.ndarray, batch: int = 256) -> dict[str, float]:
    """Images per second of the default (``combined``) of two bundles, at ``batch``, best of three."""
    out = {}
    for name, m in (("default", model), ("previous_default", previous)):
        m.raw_scores(x[:batch], "combined")
        best = min(_timed(lambda: m.raw_scores(x[:batch], "combined")) for _ in range(3))
        out[name] = batch / best
    return out


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def large_input(work: Path, size: int, n: int, epochs: int, defect_steps: int | None = None) -> dict[str, Any]:
    """Train, export and score a model at ``size`` x ``size`` RGB: time, memory, bundle size, scoring rate."""
    rng = np.random.default_rng(5)
    pool = [photo(p) for p in NORMAL_PHOTOS]
    task = Task(f"large{size}", to_uint8([random_crop(rng, pool[i % len(pool)], size, (size, 2 * size)) for i in range(n)]),
                np.zeros((0,)), {})
    model, cost = edgevae_model(task, work, [], epochs, defect_steps=defect_steps)
    x = task.train[:64]
    model.raw_scores(x[:8], "combined")
    started = time.perf_counter()
    model.raw_scores(x, "combined")
    cost["combined_images_per_second"] = x.shape[0] / (time.perf_counter() - started)
    cost.update(size=size, images=n, epochs=epochs, model=model.manifest.raw["model"])
    return cost


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__ or "", "real_images")
    parser.add_argument("--no-pyod", action="store_true")
    parser.add_argument("--splits", type=int, default=3, help="random splits of the faces task")
    parser.add_argument("--no-large", action="store_true", help="leave out the 256x256 model (measured on its own before)")
    parser.add_argument("--no-plain", action="store_true", help="leave out the plain autoencoder on the inspection task")
    parser.add_argument("--tasks", default="inspection,texture_grass,texture_gravel,photos", help="tasks to run")
    parser.add_argument("--lofo-steps", type=int, default=LOFO_STEPS, help="steps of each leave-one-family-out head (0: skip)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    smoke = args.smoke
    size, n_train, n_test = (32, 60, 20) if smoke else (64, 500, 100)
    epochs = 2 if smoke else None
    head_steps = SMOKE_DEFECT_STEPS if smoke else None
    use_pyod = not (args.no_pyod or smoke)
    # a smoke run trains on the inspection task alone (its test builds a texture task without training on it)
    tasks = [inspection(size, n_train, n_test), *(texture(t, size, n_train, n_test) for t in
                                                  (() if smoke else ("grass", "gravel")))]
    tasks += [] if smoke else [photos(size, n_train, n_test)]
    if not smoke:
        tasks = [t for t in tasks if t.name in args.tasks.split(",")]
    report: dict[str, Any] = {"tasks": {}, "faces": [], "lofo": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for task in tasks:
            print(f"== {task.name}: {task.train.shape[0]} training images {task.train.shape[1:]}", flush=True)
            model, cost = edgevae_model(task, work, [], epochs, defect_steps=head_steps)
            plain = (edgevae_model(task, work, ["--plain", "--no-defect-head"], epochs)[0]
                     if task.name == "inspection" and not args.no_plain else None)
            report["tasks"][task.name] = {**evaluate(task, model, use_pyod, plain), "cost": cost}
            if task.name in ("inspection", "texture_gravel", "photos") and args.lofo_steps:
                report["lofo"] += leave_one_family_out(task, 10 if smoke else args.lofo_steps)
            if task.name == "inspection":  # the previous default: the same run exported without the head
                previous, prev_cost = export_only(work, task, ["--no-defect-head", "--combine", ",".join(PREVIOUS_PARTS)])
                x = np.concatenate([task.normal] * 3)
                report["cost_against_previous"] = {"throughput": throughput(model, previous, x),
                                                   "bundle_mb": cost["bundle_mb"],
                                                   "previous_bundle_mb": prev_cost["bundle_mb"],
                                                   "train_seconds": cost["train_seconds"],
                                                   "previous_train_seconds": cost["vae_seconds"]}
            print(json.dumps(report["tasks"][task.name]["auroc"], indent=None)[:2000], flush=True)
            Path(args.json).with_suffix(".partial.json").write_text(json.dumps(report, indent=1))
        for split in range(1 if smoke else args.splits):
            task = faces(split)
            model, cost = edgevae_model(task, work, [], epochs, defect_steps=head_steps)
            report["faces"].append({**evaluate(task, model, use_pyod, None), "cost": cost})
        report["large"] = None if args.no_large else large_input(work, 64 if smoke else 256, 48 if smoke else 120,
                                                                 1 if smoke else 5, head_steps)
    save_report("real_images", report, markdown, args, started)
    Path(args.json).with_suffix(".partial.json").unlink(missing_ok=True)
    return report


# ------------------------------------------------------------------------------------------- report
def _fmt(v: float) -> str:
    return f"{v:.3f}"


def _auroc_table(rows: dict[str, dict[str, float]], columns: list[str]) -> list[str]:
    lines = ["| kind | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for kind, row in rows.items():
        best = max(row[c] for c in columns)
        lines.append(f"| {kind} | " + " | ".join(f"**{_fmt(row[c])}**" if row[c] == best else _fmt(row[c])
                                                  for c in columns) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = ["## Real images (photographs shipped with scikit-image)", "",
             f"Measured by `python benchmarks/real_images.py` on {report['machine']}, {report['date']}; total "
             f"{report['seconds'] / 60:.1f} min. Raw results: `benchmarks/results/real_images.json`."
             + (" **Smoke run: tiny sizes, figures mean nothing.**" if report["smoke"] else "")
             + (f" {report['note']}" if report.get("note") else ""), "",
             "Every edgevae model is trained and exported by the command line at its defaults (the architecture "
             "rule, 150 epochs, the defect head trained after the VAE for at most the VAE's time, `combined` as the "
             "default score). AUROC per anomaly kind (the best of a row in bold). `combined` is today's default "
             "(parts: defect, local, smooth_recon, elbo, too_likely); `combined_previous` is the default before the "
             "defect head (local, smooth_recon, elbo), computed from the same bundle's references; `plain_*` is the "
             "plain autoencoder (`--plain`, s = 0, no KL term) trained on the same images. `flat` and "
             "`nearly_uniform` are images simpler than the normal ones (the mean colour; a heavy blur). Visibility "
             "of a local kind: the mean absolute change over the defect's pixels divided by the standard deviation "
             "of the normal image in the 16 x 16 window around it (median over the test images).", "",
             "The texture tasks' local kinds, one test patch each (grass above, gravel below; each patch over its "
             "mask's outline; `python benchmarks/defect_panel.py`): a normal patch, then `spot`, `scratch`, "
             "`discoloured` (the hard rows: on grass a 3-5 px spot darker by 0.25 and a 1-px line of +-0.2 look like "
             "more grass) and their visible versions.", "", "![texture defects](images/texture_defects.png)", ""]
    for name, task in report["tasks"].items():
        first = next(iter(task["auroc"].values()))
        columns = [m for m in ("combined", "combined_previous", *METHODS[1:]) if m in first]
        columns += [b for b in BASELINES if b in first]
        columns += [c for c in next(iter(task["auroc"].values())) if c.startswith("plain_")]
        cost = task["cost"]
        lines += [f"### {name}", "", *_auroc_table(task["auroc"], columns), ""]
        if task["pixel_auroc"]:
            lines.append("Pixel-level AUROC of the VAE's anomaly maps: " + ", ".join(
                f"{k} {_fmt(v)}" for k, v in task["pixel_auroc"].items()) + ".")
        if task.get("defect_pixel_auroc"):
            lines.append("Pixel-level AUROC of the defect head's maps: " + ", ".join(
                f"{k} {_fmt(v)}" for k, v in task["defect_pixel_auroc"].items()) + ".")
        if task.get("visibility"):
            lines.append("Visibility of the local kinds: " + ", ".join(
                f"{k} {v:.2f}" for k, v in task["visibility"].items()) + ".")
        if cost.get("defect_seconds") is not None:
            lines.append(f"Of the training: VAE {cost['vae_seconds']:.0f} s, defect head {cost['defect_seconds']:.0f} s "
                         f"({cost['defect_steps']} steps); defect.onnx {cost['defect_onnx_mb']:.2f} MB.")
        lines += [f"Training {cost['train_seconds']:.0f} s (peak {cost['train_peak_mb']:.0f} MB), export "
                  f"{cost['export_seconds']:.0f} s (peak {cost['export_peak_mb']:.0f} MB), bundle "
                  f"{cost['bundle_mb']:.1f} MB; the default's false-positive rate on the normal test images at its "
                  f"stored 1 % threshold: {task['fpr_at_threshold']:.1%}.", ""]
    if report["faces"]:
        kinds = report["faces"][0]["auroc"]["non_faces"]
        cols = [c for c in kinds]
        lines += ["### faces (lfw_subset, 70 training faces per split)", "",
                  "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        values = {c: [f["auroc"]["non_faces"][c] for f in report["faces"]] for c in cols}
        lines.append("| mean AUROC | " + " | ".join(_fmt(float(np.mean(values[c]))) for c in cols) + " |")
        lines.append("| min – max | " + " | ".join(f"{min(values[c]):.3f}–{max(values[c]):.3f}" for c in cols) + " |")
        lines.append(f"\n{len(report['faces'])} random splits.")
        lines.append("")
    if report.get("lofo"):
        lines += ["### Leave one generator family out", "",
                  f"Defect heads trained in process on each task's training images for {report['lofo'][0]['steps']} "
                  "steps, with every mask and fill family of the generator and with one left out; the `defect` "
                  "score's AUROC on the benchmark kinds that family resembles most (what the head finds that it was "
                  "never shown).", "",
                  "| task | left out | kind | all families | without it |", "|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['left_out']} | {r['kind']} | {_fmt(r['all_families'])} | {_fmt(r['without'])} |"
                  for r in report["lofo"]]
        lines.append("")
    against = report.get("cost_against_previous")
    if against:
        t = against["throughput"]
        lines += ["### Cost against the previous default (inspection task)", "",
                  "| | previous default (no head; local, smooth_recon, elbo) | default (with the head) | ratio |",
                  "|---|---|---|---|",
                  f"| `combined` images/s, batch 256 | {t['previous_default']:.0f} | {t['default']:.0f} | "
                  f"{t['default'] / t['previous_default']:.2f}x |",
                  f"| bundle MB | {against['previous_bundle_mb']:.2f} | {against['bundle_mb']:.2f} | "
                  f"{against['bundle_mb'] / against['previous_bundle_mb']:.2f}x |",
                  f"| training s (previous: the VAE alone) | {against['previous_train_seconds']:.0f} | {against['train_seconds']:.0f} | "
                  f"{against['train_seconds'] / against['previous_train_seconds']:.2f}x |", ""]
    large = report.get("large")
    if not large:
        return "\n".join(lines)
    lines += [f"### A {large['size']}x{large['size']} RGB model", "",
              f"{large['images']} crops, {large['epochs']} epochs: training {large['train_seconds']:.0f} s (peak "
              f"{large['train_peak_mb']:.0f} MB), export {large['export_seconds']:.0f} s (peak "
              f"{large['export_peak_mb']:.0f} MB), bundle {large['bundle_mb']:.1f} MB, scoring with `combined` "
              f"{large['combined_images_per_second']:.0f} images/s (batch 64, this machine). Architecture by the rule: "
              f"stages {large['model']['widths']}, latent {large['model']['latent_dim']}, hidden {large['model']['hidden']}.",
              ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

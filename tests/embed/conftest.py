"""The embed tier: programs outside Python run the session's bundle and must agree with edgevae.runtime."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EMBED = ROOT / "embed"
METHODS = ("kl", "recon", "rel_recon", "smooth_recon", "elbo", "too_likely", "local", "defect", "combined")


def need(tool_ok: bool, reason: str) -> None:
    """Skip with a one-line reason, or fail where the tier is required (CI sets EDGEVAE_REQUIRE_EMBED=1)."""
    if tool_ok:
        return
    if os.environ.get("EDGEVAE_REQUIRE_EMBED") == "1":
        pytest.fail(f"the embed tier is required here but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def embed_inputs(tmp_path_factory: pytest.TempPathFactory, sample_folder: Path, test_digits) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Files in every format the programs read, with the uint8 / float arrays they hold: test digits, the demo
    outliers, and raw float32 images."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("embed_inputs")
    arrays: dict[str, np.ndarray] = {}
    pngs = sorted(sample_folder.rglob("*.png"))
    for i, png in enumerate(pngs):
        gray = np.asarray(Image.open(png).convert("L"))
        for suffix in (".pgm", ".png"):
            path = folder / f"{png.parent.name}_{png.stem}{suffix}"
            Image.fromarray(gray).save(path)
            arrays[str(path)] = gray
    rgb = np.stack([test_digits[0][40], test_digits[0][41], test_digits[0][42]], axis=-1)  # a colour file: luma
    Image.fromarray(rgb).save(folder / "colour.ppm")
    arrays[str(folder / "colour.ppm")] = np.asarray(Image.fromarray(rgb).convert("L"))
    for i in range(3):
        x = test_digits[0][50 + i].astype(np.float32) / np.float32(255)
        x[3:6, 3:20] = 1.0  # a stroke no digit has
        path = folder / f"raw_{i}.f32"
        x.astype("<f4").tofile(path)
        arrays[str(path)] = x
    return arrays


def without_png(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs a program without an image codec reads (PGM/PPM and raw float32)."""
    return {k: v for k, v in arrays.items() if not k.endswith(".png")}


def as_images(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """What the runtime makes of the input files: float32 in [0, 1], channels first."""
    from edgevae.runtime import uint8_to_unit

    images = [uint8_to_unit(a) if a.dtype == np.uint8 else a for a in arrays.values()]
    images = [np.moveaxis(a, -1, 0) if a.ndim == 3 and a.shape[-1] == 3 else a for a in images]  # HWC files -> CHW
    return np.stack(images)


def compare(model, rows: list[dict], arrays: dict[str, np.ndarray], method: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Assert the programs' rows agree with the runtime: scores within 1e-4 relative, the p-value of each row's score
    as the runtime computes it (relative 1e-6), flags equal. Returns the largest differences seen."""
    assert [r["item"] for r in rows] == list(arrays), "one row per input, in order"
    result = model.score(as_images(arrays), method)
    calibration = model.manifest.calibration[method]
    worst = {"score_rel": 0.0, "p_abs": 0.0}
    for row, s, flag in zip(rows, result.scores, result.is_outlier):
        assert row["method"] == method and "error" not in row, row
        rel = abs(row["score"] - float(s)) / max(1.0, abs(float(s)))
        assert rel <= 1e-4, (row, float(s))
        # p-values are continuous in the score: the program's p-value of its own score, by the runtime's rule
        p = float(calibration.p_values(np.array([row["score"]]))[0])
        assert abs(row["p_value"] - p) <= 1e-6 * max(1e-3, p) or abs(row["p_value"] - p) <= 1e-12, (row, p)
        worst["p_abs"] = max(worst["p_abs"], abs(row["p_value"] - p))
        assert row["outlier"] == bool(flag), (row, float(s), result.threshold)
        worst["score_rel"] = max(worst["score_rel"], rel)
    return worst


@pytest.fixture()
def tampered(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    graph = copy / "encoder.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    return copy


@pytest.fixture(scope="session")
def rgb_bundle(tmp_path_factory: pytest.TempPathFactory, test_digits) -> Path:  # type: ignore[no-untyped-def]
    """A tiny RGB model (digits tinted in random colours, 28x28x3), trained a few epochs and exported."""
    from edgevae.export import ExportConfig, export_bundle
    from edgevae.training import DataSpec, ModelConfig, TrainConfig, train

    folder = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    digits = test_digits[0][:400].astype(np.float32)
    colours = rng.uniform(0.3, 1.0, (400, 1, 1, 3)).astype(np.float32)
    np.save(folder / "rgb.npy", (digits[..., None] * colours).round().astype(np.uint8))  # (N, H, W, 3)
    train(DataSpec(source=str(folder / "rgb.npy")), folder / "run", ModelConfig(channels=3, latent_dim=4, widths=(8, 16),
                                                                             hidden=32), TrainConfig(epochs=3))
    export_bundle(folder / "run", folder / "bundle", ExportConfig(elbo_samples=4, iwae_samples=8)).close()
    return folder / "bundle"


@pytest.fixture(scope="session")
def rgb_inputs(tmp_path_factory: pytest.TempPathFactory, test_digits) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Colour images as PPM, PNG and raw float32 (CHW), with the arrays the runtime makes of them."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("rgb_inputs")
    rng = np.random.default_rng(1)
    arrays: dict[str, np.ndarray] = {}
    for i in range(6):
        rgb = (test_digits[0][500 + i][..., None] * rng.uniform(0, 1, (1, 1, 3))).round().astype(np.uint8)
        if i == 5:
            rgb[10:18, 10:18] = (255, 0, 0)  # a red block: unlike anything in training
        for suffix in (".ppm", ".png"):
            Image.fromarray(rgb).save(folder / f"c{i}{suffix}")
            arrays[str(folder / f"c{i}{suffix}")] = rgb
    x = (rng.uniform(0, 1, (3, 28, 28))).astype("<f4")
    x.tofile(folder / "noise.f32")
    arrays[str(folder / "noise.f32")] = x
    return arrays


@pytest.fixture(scope="session")
def signed_bundles(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A signed copy of the session bundle, the owner's and a stranger's public keys, and an altered signed copy
    (a threshold changed after signing). Needs the sign extra."""
    pytest.importorskip("cryptography")
    import json

    from edgevae.runtime import generate_key, sign_bundle

    folder = tmp_path_factory.mktemp("signed")
    _, owner, _ = generate_key(folder / "owner")
    _, stranger, _ = generate_key(folder / "stranger")
    signed, altered = folder / "signed", folder / "altered"
    shutil.copytree(bundle, signed)
    sign_bundle(signed, folder / "owner")
    shutil.copytree(signed, altered)
    manifest = json.loads((altered / "edgevae.json").read_text())
    for cal in manifest["calibration"]["methods"].values():
        cal["threshold"] *= 10  # an attacker silences the outlier flag
    (altered / "edgevae.json").write_text(json.dumps(manifest, indent=2))
    return {"signed": signed, "altered": altered, "unsigned": bundle, "owner": owner, "stranger": stranger}


# What each refusal says, in every program (the Python runtime's words).
REFUSALS = {"unsigned": "is not signed", "stranger": "not a trusted key", "altered": "altered after it was signed"}


def check_signature_refusals(run, signed_bundles: dict[str, Path], image: str) -> None:  # type: ignore[no-untyped-def]
    """``run(*args)`` (a program's command line) loads the signed bundle with its owner's key, and refuses, with
    exit status 1, no rows and the runtime's words: an unsigned bundle, another signer, an altered manifest."""
    import json

    owner, stranger = str(signed_bundles["owner"]), str(signed_bundles["stranger"])
    proc = run("-m", str(signed_bundles["signed"]), "--trusted-key", owner, image)
    assert proc.returncode == 0 and json.loads(proc.stdout)["score"] > 0, proc.stderr
    cases = {"unsigned": (signed_bundles["unsigned"], owner), "stranger": (signed_bundles["signed"], stranger),
             "altered": (signed_bundles["altered"], owner)}
    for case, (folder, key) in cases.items():
        proc = run("-m", str(folder), "--trusted-key", key, image)
        assert proc.returncode == 1 and REFUSALS[case] in proc.stderr and proc.stdout == "", (case, proc.stderr)
        assert "Sanitizer" not in proc.stderr


@pytest.fixture()
def legacy_bundle(bundle: Path, tmp_path: Path) -> Path:
    """The bundle as exported before ``scoring.method_specs``: the programs derive the same entries from the
    older fields."""
    copy = tmp_path / "legacy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "edgevae.json").read_text())
    del manifest["scoring"]["method_specs"]
    (copy / "edgevae.json").write_text(json.dumps(manifest, indent=2))
    return copy


def mosaic(digits: np.ndarray, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A height x width uint8 image of random 28x28 digits side by side (cropped at the far edges)."""
    rows, cols = -(-height // 28), -(-width // 28)
    picks = digits[rng.integers(0, len(digits), rows * cols)]
    canvas = picks.reshape(rows, cols, 28, 28).transpose(0, 2, 1, 3).reshape(rows * 28, cols * 28)
    return np.ascontiguousarray(canvas[:height, :width])


@pytest.fixture(scope="session")
def tiled_bundle(bundle: Path, tmp_path_factory: pytest.TempPathFactory, test_digits) -> Path:  # type: ignore[no-untyped-def]
    """The session bundle made tiled (28x28 tiles every 14 px) and calibrated by ``edgevae.runtime.recalibrate`` on
    30 whole 56x56 mosaics of digits (9 tiles each): the tiles' own calibration and the image-level one, as a
    tiled run's export writes them."""
    return made_tiled(bundle, tmp_path_factory.mktemp("tiled") / "bundle", test_digits[0][:300])


def made_tiled(bundle: Path, copy: Path, digits: np.ndarray) -> Path:
    """A copy of ``bundle`` made tiled (28x28 tiles every 14 px, position-free) and calibrated by
    ``edgevae.runtime.recalibrate`` on 30 whole 56x56 mosaics of ``digits``."""
    from edgevae.runtime.recalibrate import recalibrate

    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "edgevae.json").read_text())
    manifest["tiling"] = {"tile": [28, 28], "stride": 14, "aggregate": "max", "downscale": 1, "positional": False}
    (copy / "edgevae.json").write_text(json.dumps(manifest, indent=2))
    rng = np.random.default_rng(7)
    recalibrate(copy, [mosaic(digits, rng, 56, 56)[None] for _ in range(30)], fpr=0.05)
    return copy


@pytest.fixture(scope="session")
def ensemble_tiled_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory, test_digits) -> Path:  # type: ignore[no-untyped-def]
    """The session's run with the defect head a tiled run ships: full resolution (a logit per pixel), here two
    heads from successive seeds averaged (``train --defect-heads 2``), exported and made tiled as ``tiled_bundle``:
    the programs must run that graph as they run the half-resolution single head."""
    import torch

    from edgevae.export import ExportConfig, export_bundle
    from edgevae.training.defect_head import HeadConfig, save_head, train_head
    from edgevae.training.defects import SURFACE_DEFECTS

    work = tmp_path_factory.mktemp("ensemble")
    run = work / "run"
    shutil.copytree(tiny_run, run)
    digits = np.load(ROOT / "training/embedded/mnist_5k.npz")["images"][:64, None] / 255.0
    head = train_head(torch.from_numpy(digits.astype(np.float32)), HeadConfig(
        channels=1, widths=(8, 8, 8), steps=20, batch_size=8, seed=5, resolution="full", members=2,
        defects=SURFACE_DEFECTS, hard_negatives=16))
    save_head(head, run)
    export_bundle(run, work / "untiled", ExportConfig(elbo_samples=8, iwae_samples=64))
    return made_tiled(work / "untiled", work / "bundle", test_digits[0][:300])


@pytest.fixture(scope="session")
def fixed_camera(bundle: Path, tmp_path_factory: pytest.TempPathFactory, test_digits) -> tuple[Path, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """The session bundle made a fixed camera (``tiling.positional``): 28x28 tiles every 14 px over 56x70 frames
    of one mosaic of digits with sensor noise, seen by a camera that vibrates (each frame up to a pixel off); its
    frame alignment and per-position statistics measured on 24 frames (``tiles.FrameAlignment.fit`` and
    ``tiles.frame_stats``, as export does) and its references and image-level calibration on 20 more by
    ``edgevae.runtime.recalibrate``; and PGM and PNG test files with the uint8 arrays they hold: normal frames,
    a frame with a bright bar, one with a dark patch, and a frame of another size (which every reader refuses)."""
    from PIL import Image

    from edgevae.runtime import load
    from edgevae.runtime.files import sha256_hex
    from edgevae.runtime.recalibrate import recalibrate
    from edgevae.runtime.tiles import FRAME_DEFECT_FILE, FRAME_MAP_FILE, FrameAlignment, Tiling, frame_stats

    rng = np.random.default_rng(9)
    scene = mosaic(test_digits[0][:300], rng, 58, 72).astype(np.float64)

    def frame() -> np.ndarray:
        dy, dx = (int(v) for v in rng.integers(0, 3, 2))
        view = scene[dy:dy + 56, dx:dx + 70]
        return np.clip(np.rint(view + rng.normal(0, 6, view.shape)), 0, 255).astype(np.uint8)

    copy = tmp_path_factory.mktemp("fixed_camera") / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "edgevae.json").read_text())
    with load(copy, ["CPUExecutionProvider"]) as model:
        training = [frame()[None] for _ in range(24)]
        measured = frame_stats(model, training, Tiling((28, 28), 14), FrameAlignment.fit(training, 2))
    assert measured.defect is not None and measured.alignment is not None
    files = {FRAME_MAP_FILE: measured.stats.to_bytes(), FRAME_DEFECT_FILE: measured.defect.to_bytes(),
             **measured.alignment.files()}
    for name, data in files.items():
        (copy / name).write_bytes(data)
        manifest["files"][name] = {"sha256": sha256_hex(data), "bytes": len(data)}
    manifest["tiling"] = {"tile": [28, 28], "stride": 14, "aggregate": "max", "downscale": 1, "positional": True,
                          "frame": [56, 70], "map": {**measured.stats.manifest_entry(), "file": FRAME_MAP_FILE,
                                                     "shape": [2, 56, 70]},
                          "defect_map": measured.defect.manifest_entry(),
                          "alignment": measured.alignment.manifest_entry()}
    (copy / "edgevae.json").write_text(json.dumps(manifest, indent=2))
    recalibrate(copy, [frame()[None] for _ in range(20)], fpr=0.05)
    folder = tmp_path_factory.mktemp("fixed_camera_inputs")
    images = [frame() for _ in range(3)]
    bar, patch = frame(), frame()
    bar[20:23, 5:40] = 255
    patch[30:38, 50:58] = 0
    arrays: dict[str, np.ndarray] = {}
    for i, image in enumerate([*images, bar, patch]):
        for suffix in (".pgm", ".png"):
            Image.fromarray(image).save(folder / f"f{i}{suffix}")
            arrays[str(folder / f"f{i}{suffix}")] = image
    Image.fromarray(frame()[:, :56]).save(folder / "other_size.pgm")
    return copy, arrays


def check_ensemble_head(run, bundle: Path, inputs: dict[str, np.ndarray], method: str) -> None:  # type: ignore[no-untyped-def]
    """A program scores ``ensemble_tiled_bundle`` (a full-resolution defect graph, the mean of two heads) by tiles as
    ``Model.score_tiled`` does, through the tiles and the combined score's references."""
    from edgevae.runtime import load

    model = load(bundle, ["CPUExecutionProvider"])
    defect = model.manifest.raw["scoring"]["defect"]
    assert defect["resolution"] == "full" and defect["members"] == 2
    proc = run("-m", str(bundle), "--method", method, *inputs)
    assert proc.returncode == 0 and "Sanitizer" not in proc.stderr, proc.stderr
    compare_tiled(model, [json.loads(line) for line in proc.stdout.splitlines()], inputs, method)


def check_fixed_camera(run, fixed_camera, method: str, png: bool) -> None:  # type: ignore[no-untyped-def]
    """A program scores a fixed camera's frames as ``Model.score_tiled`` does (aligned to the scene), gives a frame
    of another size an error row that names the frame's size while the frames beside it are scored, and (once, with
    ``local``) refuses a malformed or altered alignment."""
    from edgevae.runtime import load

    bundle, arrays = fixed_camera
    inputs = {k: v for k, v in arrays.items() if png or not k.endswith(".png")}
    proc = run("-m", str(bundle), "--method", method, *inputs)
    assert proc.returncode == 0 and "Sanitizer" not in proc.stderr, proc.stderr
    model = load(bundle, ["CPUExecutionProvider"])
    assert model.positional is not None and model.positional.alignment is not None
    # the frames sit at several shifts off the scene: the program's alignment is what is compared
    assert len({model.positional.alignment.estimate(a[None]) for a in inputs.values()}) > 2
    compare_tiled(model, [json.loads(line) for line in proc.stdout.splitlines()], inputs, method)
    other = str(Path(next(iter(arrays))).with_name("other_size.pgm"))
    first = next(iter(inputs))
    proc = run("-m", str(bundle), "--method", method, other, first)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 2 and "fixed camera" in rows[0]["error"] and "56x70" in rows[0]["error"], proc.stdout
    assert "score" in rows[1] and "Sanitizer" not in proc.stderr
    if method != "local":  # the manifest is read alike for every method: its refusals are checked once
        return
    # a malformed or altered alignment is refused (exit status 1, no rows) with a message naming it
    cases = [("tiling.alignment", {"radius": 30}), ("tiling.alignment", {"map": {"file": "frame_map_aligned.f32",
                                                                               "shape": [2, 56, 69]}}),
             ("tiling.alignment", {"file": "../edgevae.json"}), ("frame_reference.f32", None)]
    for i, (words, change) in enumerate(cases):
        copy = bundle.parent / f"bad_alignment_{method}_{i}"
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(bundle, copy)
        if change is None:
            data = bytearray((copy / "frame_reference.f32").read_bytes())
            data[5] ^= 0x10
            (copy / "frame_reference.f32").write_bytes(bytes(data))
        else:
            manifest = json.loads((copy / "edgevae.json").read_text())
            manifest["tiling"]["alignment"].update(change)
            (copy / "edgevae.json").write_text(json.dumps(manifest))
        proc = run("-m", str(copy), "--method", method, first)
        assert proc.returncode == 1 and words in proc.stderr and proc.stdout == "", (words, proc.stderr)
        assert "Sanitizer" not in proc.stderr


@pytest.fixture(scope="session")
def tiled_inputs(tmp_path_factory: pytest.TempPathFactory, test_digits) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Large PGM, PPM and PNG files for the tiled bundle, with the uint8 arrays they hold: mosaics of unseen digits
    of as many tiles as the calibration images (56x56: 9), fewer (42x70: 8) and more (84x98: 30; 60x45: 12), one
    tile (28x28), one with a patch of noise, and a colour file (luma)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("tiled_inputs")
    rng = np.random.default_rng(8)
    digits = test_digits[0][300:600]
    arrays: dict[str, np.ndarray] = {}
    sizes = [(56, 56), (42, 70), (84, 98), (28, 28), (56, 56), (60, 45)]
    for i, (h, w) in enumerate(sizes):
        image = mosaic(digits, rng, h, w)
        if i == 4:
            image[10:40, 12:44] = rng.integers(0, 256, (30, 32))  # a patch of noise: no digit looks like it
        for suffix in (".pgm", ".png"):
            Image.fromarray(image).save(folder / f"m{i}_{h}x{w}{suffix}")
            arrays[str(folder / f"m{i}_{h}x{w}{suffix}")] = image
    rgb = np.stack([mosaic(digits, rng, 56, 70) for _ in range(3)], axis=-1)
    Image.fromarray(rgb).save(folder / "colour.ppm")
    arrays[str(folder / "colour.ppm")] = np.asarray(Image.fromarray(rgb).convert("L"))
    return arrays


def compare_tiled(model, rows: list[dict], arrays: dict[str, np.ndarray], method: str) -> None:  # type: ignore[no-untyped-def]
    """Assert a program's rows for a tiled bundle agree with ``Model.score_tiled``: scores within 1e-4 relative,
    the p-value of each row's score by the runtime's rule (size-adjusted) within 1e-6 relative, flags equal."""
    from edgevae.runtime.tiles import calibrated_tiles, size_adjusted_p

    assert [r["item"] for r in rows] == list(arrays), "one row per input, in order"
    cal = model.tiling.calibration
    for row, image in zip(rows, arrays.values()):
        assert row["method"] == method and "error" not in row, row
        result = model.score_tiled(image, method)
        assert abs(row["score"] - result.score) <= 1e-4 * max(1.0, abs(result.score)), (row, result)
        p0 = float(cal.methods[method].p_values(np.array([row["score"]]))[0])
        p = size_adjusted_p(p0, result.tiles, calibrated_tiles(cal) or result.tiles)
        assert abs(row["p_value"] - p) <= 1e-6 * max(1e-3, p) or abs(row["p_value"] - p) <= 1e-12, (row, p)
        assert row["outlier"] == result.is_outlier, (row, result)


@pytest.fixture()
def respecified(bundle: Path, tmp_path: Path) -> Path:
    """The bundle with its combined score's Monte-Carlo parts told to draw 3 samples (scoring.method_specs only): a program
    that reads the specs scores it as the runtime does with 3 samples, one that re-types defaults does not."""
    copy = tmp_path / "respecified"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "edgevae.json").read_text())
    specs = manifest["scoring"]["method_specs"]
    for part in specs["combined"]["part_samples"]:  # elbo and too_likely: the Monte-Carlo parts
        if specs[part]["kind"] == "monte_carlo":
            specs["combined"]["part_samples"][part] = 3
    (copy / "edgevae.json").write_text(json.dumps(manifest, indent=2))
    return copy


def reweighted(bundle: Path, tmp_path: Path, weights: object) -> Path:
    """A copy of the bundle whose combined score's parts carry ``weights`` (scoring.combined.weights and its method
    spec; the manifest is not under a checksum)."""
    copy = tmp_path / f"reweighted{len(list(tmp_path.glob('reweighted*')))}"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "edgevae.json").read_text())
    manifest["scoring"]["combined"]["weights"] = weights
    manifest["scoring"]["method_specs"]["combined"]["weights"] = weights
    (copy / "edgevae.json").write_text(json.dumps(manifest, indent=2))
    return copy


def check_weights_are_read(run, model, bundle: Path, arrays: dict[str, np.ndarray], tmp_path: Path,  # type: ignore[no-untyped-def]
                           tiled: Path, tiled_arrays: dict[str, np.ndarray]) -> None:
    """A program reads the combined score's part weights as the runtime does (scores equal to the runtime's on the
    reweighted bundle, and unlike the unweighted ones), an image at a time and by tiles, and refuses weights that
    are not one positive number per part."""
    from edgevae.runtime import load

    parts = model.manifest.scoring.combined_parts
    weights = [float(len(parts) - 1) if p == "defect" else 1.0 for p in parts]
    weights[-1] = 0.25  # every part's share differs from an equal one, with or without a defect part
    heavy = reweighted(bundle, tmp_path, weights)
    proc = run("-m", str(heavy), "--method", "combined", *arrays)
    assert proc.returncode == 0, proc.stderr
    with load(heavy, ["CPUExecutionProvider"]) as weighted:
        assert weighted.manifest.scoring.combined_weights == tuple(weights)
        compare(weighted, [json.loads(line) for line in proc.stdout.splitlines()], arrays, "combined")
        want = weighted.raw_scores(as_images(arrays), "combined")
    assert not np.allclose(want, model.raw_scores(as_images(arrays), "combined"), rtol=1e-3)
    heavy_tiles = reweighted(tiled, tmp_path, weights)
    proc = run("-m", str(heavy_tiles), "--method", "combined", *tiled_arrays)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    with load(heavy_tiles, ["CPUExecutionProvider"]) as weighted, load(tiled, ["CPUExecutionProvider"]) as plain:
        compare_tiled(weighted, rows, tiled_arrays, "combined")
        assert not np.allclose([r["score"] for r in rows],
                               [plain.score_tiled(a, "combined").score for a in tiled_arrays.values()], rtol=1e-3)
    for bad in ([1.0] * (len(parts) - 1), [1.0] * (len(parts) - 1) + [0.0], "heavy"):
        proc = run("-m", str(reweighted(bundle, tmp_path, bad)), "--method", "combined", *arrays)
        assert proc.returncode == 1 and "weights" in proc.stderr and proc.stdout == "", proc.stderr


def combined_with_samples(model, arrays: dict[str, np.ndarray], k: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The runtime's combined scores with ``k`` samples in its Monte-Carlo parts."""
    return np.asarray(model.combination.statistic(model.combined_parts(as_images(arrays), samples=k)))


def check_specs_are_read(run, model, bundle: Path, legacy: Path, respecified: Path, arrays: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    """A program scores a bundle without method specs as before, refuses iwae at load, and follows the specs."""
    import json

    for method in ("combined", "elbo", "kl"):
        proc = run("-m", str(legacy), "--method", method, *arrays)
        assert proc.returncode == 0, proc.stderr
        compare(model, [json.loads(line) for line in proc.stdout.splitlines()], arrays, method)
    proc = run("-m", str(bundle), "--method", "iwae", *arrays)
    assert proc.returncode == 1 and "not implemented here" in proc.stderr and proc.stdout == "", proc.stderr
    proc = run("-m", str(respecified), "--method", "combined", *arrays)
    assert proc.returncode == 0, proc.stderr
    got = np.array([json.loads(line)["score"] for line in proc.stdout.splitlines()])
    three, one = combined_with_samples(model, arrays, 3), combined_with_samples(model, arrays, 1)
    assert not np.allclose(three, one, rtol=1e-4), "the test needs inputs whose score depends on the samples"
    np.testing.assert_allclose(got, three, rtol=1e-4)


def check_hostile_inputs(run, bundle: Path, good: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Files a device meets from cameras and shares: a header with no samples, a named pipe with no writer, a
    directory: one error row each, never a score and never a hang; the good inputs around them are still scored.
    Bad option values are usage errors (exit 2) with the option named."""
    import os

    header_only = tmp_path / "header.pgm"
    header_only.write_bytes(b"P5 28 28 255")
    pipe = tmp_path / "pipe.pgm"
    os.mkfifo(pipe)
    folder = tmp_path / "folder.pgm"
    folder.mkdir()
    proc = run("-m", str(bundle), good, str(header_only), str(pipe), str(folder), good)  # a hang fails by timeout
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 2 and [("error" in r) for r in rows] == [False, True, True, True, False], proc.stderr
    assert "truncated" in rows[1]["error"] or "not a binary PGM" in rows[1]["error"]
    assert "not a regular file" in rows[2]["error"] and "directory" in rows[3]["error"]
    assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr
    for option, value in (("--threshold", "abc"), ("--threshold", "nan")):
        proc = run("-m", str(bundle), option, value, good)
        assert proc.returncode == 2 and f"invalid value for '{option}'" in proc.stderr and proc.stdout == "", proc.stderr
    proc = run("-m", str(bundle), "--no-such-option", "1", good)
    assert proc.returncode == 2 and "no such option" in proc.stderr


def check_channel_warnings(run, bundle: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A colour file scored by a grayscale bundle: the program's row carries the same "warning" as the Python
    command line's (and a file of the bundle's own channel count carries none)."""
    from click.testing import CliRunner

    from edgevae.cli import main

    rng = np.random.default_rng(0)
    grey, colour = tmp_path / "grey.pgm", tmp_path / "colour.ppm"
    grey.write_bytes(b"P5 28 28 255\n" + rng.integers(0, 256, 784, dtype=np.uint8).tobytes())
    colour.write_bytes(b"P6 28 28 255\n" + rng.integers(0, 256, 3 * 784, dtype=np.uint8).tobytes())
    proc = run("-m", str(bundle), str(grey), str(colour))
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    result = CliRunner().invoke(main, ["score", str(grey), str(colour), "-m", str(bundle), "--format", "jsonl"])
    want = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("warning") for r in got] == [r.get("warning") for r in want]
    assert "warning" not in got[0] and "converted with Image.convert('L')" in got[1]["warning"]


def netpbm_variants(tmp_path: Path, digit: np.ndarray) -> list[Path]:
    """One digit written as the Netpbm variants Pillow reads: comments in the header, maxval other than 255 (binary
    and plain), plain grey and colour, comments between plain samples, 16-bit grey and colour."""
    h, w = digit.shape
    files = {}
    files["comment.pgm"] = b"P5\n# a camera's comment\n" + f"{w} # width\n{h}\n255\n".encode() + digit.tobytes()
    scaled = np.rint(digit.astype(np.float64) * 100 / 255).astype(np.uint8)  # maxval 100: Pillow rescales to 8 bits
    files["maxval100.pgm"] = f"P5 {w} {h} 100\n".encode() + scaled.tobytes()
    files["plain.pgm"] = (f"P2\n{w} {h}\n255\n".encode()
                          + "\n".join(" ".join(str(v) for v in row) for row in digit).encode() + b"\n")
    files["plain7.pgm"] = (f"P2 {w} {h} 7\n# seven levels\n".encode()
                           + "\n".join(" ".join(str(v * 7 // 255) for v in row) for row in digit).encode())
    rgb = np.stack([digit, 255 - digit, digit // 2], axis=-1)
    files["plain.ppm"] = (f"P3 {w} {h} 255\n".encode()
                          + "\n".join(" ".join(str(v) for v in px) for px in rgb.reshape(-1, 3)).encode())
    files["maxval31.ppm"] = f"P6 {w} {h} 31\n".encode() + (rgb.astype(np.uint16) * 31 // 255).astype(np.uint8).tobytes()
    wide = digit.astype(np.uint32) * 1000 // 255  # 16-bit files: grey (Pillow's mode I) and colour
    files["grey16_maxval1000.pgm"] = f"P5 {w} {h} 1000\n".encode() + wide.astype(">u2").tobytes()
    files["grey16_65535.pgm"] = f"P5 {w} {h} 65535\n".encode() + (digit.astype(">u2") * 257).tobytes()
    files["grey16_dark.pgm"] = f"P5 {w} {h} 65535\n".encode() + (digit.astype(">u2") // 2).tobytes()  # all <= 255
    files["plain16.pgm"] = (f"P2 {w} {h} 1000\n".encode()
                            + "\n".join(" ".join(str(v) for v in row) for row in wide).encode())
    files["colour16.ppm"] = f"P6 {w} {h} 4095\n".encode() + (rgb.astype(">u2") * 16).tobytes()
    out = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out.append(tmp_path / name)
    return out


def check_netpbm_variants(run, bundle: Path, tmp_path: Path, digit: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """The program decodes each Netpbm variant as Pillow does: its scores agree with `edgevae score`'s."""
    from click.testing import CliRunner

    from edgevae.cli import main

    files = [str(f) for f in netpbm_variants(tmp_path, digit)]
    proc = run("-m", str(bundle), "--method", "smooth_recon", *files)
    assert proc.returncode == 0, proc.stderr
    got = {r["item"]: r["score"] for r in map(json.loads, proc.stdout.splitlines())}
    result = CliRunner().invoke(main, ["score", *files, "-m", str(bundle), "--method", "smooth_recon", "--format", "jsonl"])
    want = {r["item"]: r["score"] for r in map(json.loads, result.stdout.splitlines())}
    assert set(got) == set(want) == set(files), (got, want)
    for item in files:
        assert abs(got[item] - want[item]) <= 1e-4 * max(1.0, abs(want[item])), (item, got[item], want[item])


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def interlaced_png(rgb: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG (Pillow writes none), with a different row filter per row."""
    import struct
    import zlib

    h, w, _ = rgb.shape
    raw = bytearray()
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = rgb[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        prev = np.zeros(sub.shape[1] * 3, np.int32)
        for y, row in enumerate(sub.reshape(sub.shape[0], -1).astype(np.int32)):
            filt = y % 3  # none, sub, up
            left = np.concatenate([np.zeros(3, np.int32), row[:-3]])
            out = row if filt == 0 else (row - left) if filt == 1 else (row - prev)
            raw += bytes([filt]) + (out % 256).astype(np.uint8).tobytes()
            prev = row
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(bytes(raw)))
            + _png_chunk(b"IEND", b""))


def png_variants(tmp_path: Path, digit: np.ndarray) -> list[Path]:
    """One digit as the PNG kinds a camera or an editor writes: alpha (transparent and partial), palettes (with a
    transparent entry, and of 4 and 2 bits), 16-bit grey and colour, grey of 1 bit, grey with alpha, interlaced."""
    from PIL import Image

    h, w = digit.shape
    rgb = np.stack([digit, 255 - digit, (digit.astype(np.int32) * 3 % 256).astype(np.uint8)], axis=-1)
    alpha = np.where(digit > 128, 255, 0).astype(np.uint8)
    out = []

    def save(name: str, image: Image.Image, **kw: object) -> None:
        image.save(tmp_path / name, **kw)
        out.append(tmp_path / name)

    save("rgba_transparent.png", Image.fromarray(np.dstack([rgb, alpha])))
    save("rgba_partial.png", Image.fromarray(np.dstack([rgb, (digit // 2 + 40).astype(np.uint8)])))
    save("grey_alpha.png", Image.merge("LA", [Image.fromarray(digit), Image.fromarray(alpha)]))
    pal = Image.fromarray(rgb, "RGB").quantize(16)
    save("palette_transparent.png", pal, transparency=3)
    save("palette_4bit.png", pal, bits=4)
    save("palette_2bit.png", Image.fromarray((digit // 64).astype(np.uint8)).convert("P"), bits=2)
    save("grey16.png", Image.fromarray((digit.astype(np.uint16) * 257 + np.arange(w, dtype=np.uint16))))
    save("grey_1bit.png", Image.fromarray(digit > 100).convert("1"))
    (tmp_path / "rgb16.png").write_bytes(_rgb16_png(rgb))
    out.append(tmp_path / "rgb16.png")
    (tmp_path / "interlaced.png").write_bytes(interlaced_png(rgb))
    out.append(tmp_path / "interlaced.png")
    return out


def _rgb16_png(rgb: np.ndarray) -> bytes:
    import struct
    import zlib

    h, w, _ = rgb.shape
    samples = (rgb.astype(">u2") * 257 + 3)  # distinct low bytes: Pillow keeps the high byte
    raw = b"".join(b"\x00" + row.tobytes() for row in samples.reshape(h, -1))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


def check_png_variants(run, bundle: Path, tmp_path: Path, digit: np.ndarray, method: str = "smooth_recon") -> None:  # type: ignore[no-untyped-def]
    """The program decodes each PNG kind as the Python runtime does (Pillow): its scores agree with `edgevae score`."""
    from click.testing import CliRunner

    from edgevae.cli import main

    files = [str(f) for f in png_variants(tmp_path, digit)]
    proc = run("-m", str(bundle), "--method", method, *files)
    assert proc.returncode == 0, proc.stderr
    got = {r["item"]: r["score"] for r in map(json.loads, proc.stdout.splitlines())}
    result = CliRunner().invoke(main, ["score", *files, "-m", str(bundle), "--method", method, "--format", "jsonl"])
    want = {r["item"]: r["score"] for r in map(json.loads, result.stdout.splitlines())}
    assert set(got) == set(want) == set(files), (got, want)
    bad = {Path(i).name: (got[i], want[i]) for i in files if abs(got[i] - want[i]) > 1e-4 * max(1.0, abs(want[i]))}
    assert not bad, bad


# The files of the project's bad-input corpus that the embedded programs score (those Python scores at the bundle's
# own size, in a format the program reads); every other file is a per-item error.
CORPUS = ROOT / "tests" / "data" / "bad_inputs"
CORPUS_SCORED = {"node": {"good_digit.png", "mode_rgba.png", "mode_la.png", "mode_palette.png", "mode_i16.png"},
                 "c": set()}


def check_bad_input_corpus(run, bundle: Path, program: str) -> None:  # type: ignore[no-untyped-def]
    """Every file of the corpus gives one row, an error unless it is one the program reads; no crash, no hang."""
    files = sorted(str(p) for p in CORPUS.iterdir())
    proc = run("-m", str(bundle), *files)
    rows = {Path(r["item"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert proc.returncode == 2 and set(rows) == {Path(f).name for f in files}, proc.stderr
    assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr
    scored = {name for name, r in rows.items() if "error" not in r}
    assert scored == CORPUS_SCORED[program], scored


# Files nobody chose (scripts/make_mutated_inputs.py: zzuf's bit flips and random cuts of well-formed files). The
# Python runtime is the reference: a program must report an error where it does, and the same score where it scores
# an image at the bundle's size in a format the program reads (other sizes are resized by Python only: an error in
# the programs, as their docs say).
MUTATED = ROOT / "tests" / "data" / "mutated_inputs"


def program_rows(run, bundle: Path, method: str):  # type: ignore[no-untyped-def]
    """A function scoring files with a command-line program: its rows by file name; no crash, no sanitizer report."""
    def score(files: list[str]) -> dict[str, dict]:
        proc = run("-m", str(bundle), "--method", method, *files)
        assert proc.returncode in (0, 2), proc.stderr[-2000:]
        assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr[-2000:]
        return {Path(r["item"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    return score


def check_mutated_corpus(score, bundle: Path, program: str) -> None:  # type: ignore[no-untyped-def]
    """Every mutated file: one row, no hang; error or score as the Python runtime decides (``score(files)`` gives a
    program's rows by file name, each with a score or an error)."""
    from click.testing import CliRunner
    from PIL import Image

    from edgevae.cli import main

    files = sorted(str(p) for p in MUTATED.iterdir())
    assert len(files) >= 150, "run scripts/make_mutated_inputs.py"
    result = CliRunner().invoke(main, ["score", *files, "-m", str(bundle), "--method", "smooth_recon", "--format", "jsonl"])
    want = {Path(r["item"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    got = score(files)
    assert set(got) == set(want) == {Path(f).name for f in files}

    def native(name: str) -> bool:  # Python scores it without resizing
        with Image.open(MUTATED / name) as im:
            return im.size == (28, 28)

    reads = (".pgm", ".ppm") if program == "c" else (".pgm", ".ppm", ".png")
    wrong = {}
    for name, row in want.items():
        should_score = "error" not in row and name.endswith(reads) and native(name)
        if should_score != ("error" not in got[name]):
            wrong[name] = tuple(r.get("error", "").split(": ", 1)[-1] or r["score"] for r in (row, got[name]))
        elif should_score and abs(got[name]["score"] - row["score"]) > 1e-4 * max(1.0, abs(row["score"])):
            wrong[name] = (row["score"], got[name]["score"])
    assert not wrong, "\n".join(f"{k}: python {a!r}, {program} {b!r}" for k, (a, b) in wrong.items())
    scored = sum("error" not in r for r in got.values())
    assert 0 < scored < len(files)  # the corpus holds both kinds


@pytest.fixture(scope="session")
def tiled_model(tiled_bundle: Path):  # type: ignore[no-untyped-def]
    from edgevae.runtime import load

    return load(tiled_bundle, ["CPUExecutionProvider"])


def tiled_variant(tiled_bundle: Path, folder: Path, **changes) -> Path:  # type: ignore[no-untyped-def]
    """A copy of the tiled bundle with its tiling section changed."""
    copy = folder / "_".join(changes)
    shutil.copytree(tiled_bundle, copy)
    manifest = json.loads((copy / "edgevae.json").read_text())
    manifest["tiling"].update(changes)
    (copy / "edgevae.json").write_text(json.dumps(manifest, indent=2))
    return copy


def check_tiled_refusals(run, tiled_bundle: Path, folder: Path, image: str) -> None:  # type: ignore[no-untyped-def]
    """A program refuses, with exit status 1, no rows and a message naming the field, the tiled bundles it does
    not score as the runtime does: images shrunk before tiling, per-position statistics without their frame and
    file, a positional flag that is not a boolean, a tile other than the input, a method without an image-level
    calibration."""
    cases = {"downscale": {"downscale": 2}, "positional": {"positional": True}, "tiling.positional must be": {"positional": 1},
             "tiling.tile": {"tile": [14, 28]},
             "image-level calibration": {"calibration": {"fpr": 0.01, "methods": {}}}}
    for i, (words, change) in enumerate(cases.items()):
        (folder / f"case{i}").mkdir()
        proc = run("-m", str(tiled_variant(tiled_bundle, folder / f"case{i}", **change)), image)
        assert proc.returncode == 1 and words in proc.stderr and proc.stdout == "", (words, proc.stderr)
        assert "Sanitizer" not in proc.stderr


def check_tiled_bad_files(run, tiled_bundle: Path, folder: Path, good: str) -> None:  # type: ignore[no-untyped-def]
    """A file smaller than a tile, raw float32 (no size) and a missing file each get an error row; the good file
    between them is scored; exit status 2."""
    from PIL import Image

    small = folder / "small.pgm"
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(small)
    raw = folder / "x.f32"
    np.zeros((1, 28, 28), "<f4").tofile(raw)
    files = [str(small), good, str(raw), str(folder / "missing.pgm")]
    proc = run("-m", str(tiled_bundle), *files)
    assert proc.returncode == 2 and "Sanitizer" not in proc.stderr, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["item"] for r in rows] == files
    assert "shorter than one tile" in rows[0]["error"] and "score" in rows[1]
    assert "carries no size" in rows[2]["error"] and "error" in rows[3]

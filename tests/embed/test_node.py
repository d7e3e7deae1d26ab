"""embed/node: the Node.js scorer on onnxruntime-node (the npm package's CPU binary)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import EMBED, METHODS, check_bad_input_corpus, check_ensemble_head, check_tiled_bad_files, check_fixed_camera, check_tiled_refusals, compare_tiled, check_mutated_corpus, program_rows, check_channel_warnings, check_hostile_inputs, check_netpbm_variants, check_png_variants, check_specs_are_read, check_weights_are_read, compare, need

pytestmark = [pytest.mark.embed, pytest.mark.slow]
NODE = EMBED / "node"


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    need(exe is not None, "Node.js is not installed")
    need((NODE / "node_modules" / "onnxruntime-node").is_dir(),
         "embed/node has no node_modules: run `make embed-setup` (npm ci with ONNXRUNTIME_NODE_INSTALL=skip)")
    return str(exe)


def run(node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node, str(NODE / "score.mjs"), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("method", METHODS)
def test_node_scores_agree_with_the_runtime(node: str, bundle: Path, model, embed_inputs, method: str) -> None:  # type: ignore[no-untyped-def]
    proc = run(node, "-m", str(bundle), "--method", method, *embed_inputs)
    assert proc.returncode == 0, proc.stderr
    compare(model, [json.loads(line) for line in proc.stdout.splitlines()], embed_inputs, method)


@pytest.mark.parametrize("method", ["combined", "kl", "local", "defect"])
def test_node_scores_large_images_by_tiles_as_the_runtime(node: str, tiled_bundle: Path, tiled_model, tiled_inputs,
                                                          method: str) -> None:  # type: ignore[no-untyped-def]
    proc = run(node, "-m", str(tiled_bundle), "--method", method, *tiled_inputs)  # PNG files too
    assert proc.returncode == 0, proc.stderr
    compare_tiled(tiled_model, [json.loads(line) for line in proc.stdout.splitlines()], tiled_inputs, method)


@pytest.mark.parametrize("method", ["combined", "defect"])
def test_node_runs_a_full_resolution_ensemble_head_as_the_runtime(node: str, ensemble_tiled_bundle: Path,
        tiled_inputs, method: str) -> None:  # type: ignore[no-untyped-def]
    check_ensemble_head(lambda *a: run(node, *a), ensemble_tiled_bundle, tiled_inputs, method)


def test_node_tiled_refusals_and_bad_files(node: str, tiled_bundle: Path, tiled_inputs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = next(k for k in tiled_inputs if k.endswith(".png"))
    check_tiled_refusals(lambda *a: run(node, *a), tiled_bundle, tmp_path, good)
    check_tiled_bad_files(lambda *a: run(node, *a), tiled_bundle, tmp_path, good)


def test_node_refuses_a_tampered_graph_and_reports_bad_inputs(node: str, bundle: Path, tampered: Path,
                                                               tmp_path: Path, embed_inputs) -> None:  # type: ignore[no-untyped-def]
    proc = run(node, "-m", str(tampered), *list(embed_inputs)[:1])
    assert proc.returncode == 1 and "does not match the manifest" in proc.stderr and proc.stdout == ""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    proc = run(node, "-m", str(bundle), str(bad), list(embed_inputs)[0])
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 2 and "error" in rows[0] and "score" in rows[1]


@pytest.mark.parametrize("method", ("kl", "smooth_recon", "elbo"))
def test_node_scores_an_rgb_bundle_like_the_runtime(node: str, rgb_bundle: Path, rgb_inputs, method: str) -> None:  # type: ignore[no-untyped-def]
    from edgevae.runtime import load

    proc = run(node, "-m", str(rgb_bundle), "--method", method, *rgb_inputs)
    assert proc.returncode == 0, proc.stderr
    with load(rgb_bundle, ["CPUExecutionProvider"]) as model:
        compare(model, [json.loads(line) for line in proc.stdout.splitlines()], rgb_inputs, method)


def test_node_verifies_signed_bundles(node: str, signed_bundles: dict[str, Path], embed_inputs) -> None:  # type: ignore[no-untyped-def]
    from .conftest import check_signature_refusals

    image = list(embed_inputs)[0]
    check_signature_refusals(lambda *args: run(node, *args), signed_bundles, image)
    proc = run(node, "-m", str(signed_bundles["altered"]), image)  # no keys: the checksums alone cannot tell
    assert proc.returncode == 0


def test_node_reads_what_each_method_needs_from_the_bundle(node: str, bundle: Path, model, embed_inputs,  # type: ignore[no-untyped-def]
        legacy_bundle: Path, respecified: Path) -> None:
    check_specs_are_read(lambda *a: run(node, *a), model, bundle, legacy_bundle, respecified, embed_inputs)


def test_node_weighs_the_combined_scores_parts_as_the_runtime(node: str, bundle: Path, model, embed_inputs,  # type: ignore[no-untyped-def]
        tmp_path: Path, tiled_bundle: Path, tiled_inputs) -> None:
    check_weights_are_read(lambda *a: run(node, *a), model, bundle, embed_inputs, tmp_path, tiled_bundle,
                           tiled_inputs)


def test_node_survives_hostile_files_and_refuses_bad_options(node: str, bundle: Path, embed_inputs,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    good = next(k for k in embed_inputs if k.endswith(".pgm"))
    check_hostile_inputs(lambda *a: run(node, *a), bundle, good, tmp_path)


def test_node_rows_carry_the_channel_warning_python_gives(node: str, bundle: Path, tmp_path: Path) -> None:
    check_channel_warnings(lambda *a: run(node, *a), bundle, tmp_path)


def test_node_reads_netpbm_variants_as_pillow_does(node: str, bundle: Path, tmp_path: Path, test_digits) -> None:  # type: ignore[no-untyped-def]
    check_netpbm_variants(lambda *a: run(node, *a), bundle, tmp_path, test_digits[0][0])


@pytest.mark.parametrize("which", ["gray", "rgb"])
def test_node_decodes_every_png_kind_as_pillow_does(node: str, bundle: Path, rgb_bundle: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                    test_digits, which: str) -> None:
    check_png_variants(lambda *a: run(node, *a), bundle if which == "gray" else rgb_bundle, tmp_path, test_digits[0][0])


def test_node_gives_an_error_row_for_every_bad_file_of_the_corpus(node: str, bundle: Path) -> None:
    check_bad_input_corpus(lambda *a: run(node, *a), bundle, "node")


def test_node_agrees_with_python_on_every_mutated_file(node: str, bundle: Path) -> None:
    check_mutated_corpus(program_rows(lambda *a: run(node, *a), bundle, "smooth_recon"), bundle, "node")


@pytest.mark.parametrize("method", ["combined", "local", "defect", "elbo"])
def test_node_scores_a_fixed_camera_per_position_as_the_runtime(node: str, fixed_camera, method: str) -> None:  # type: ignore[no-untyped-def]
    check_fixed_camera(lambda *a: run(node, *a), fixed_camera, method, png=True)

"""embed/c: the C scorer, built with -Wall -Wextra -Werror and run under AddressSanitizer and UBSan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import EMBED, METHODS, check_bad_input_corpus, check_ensemble_head, check_tiled_bad_files, check_fixed_camera, check_tiled_refusals, compare_tiled, check_mutated_corpus, program_rows, check_channel_warnings, check_hostile_inputs, check_netpbm_variants, check_specs_are_read, check_weights_are_read, compare, need, without_png

pytestmark = [pytest.mark.embed, pytest.mark.slow]


@pytest.fixture(scope="module")
def scorer() -> Path:
    need(shutil.which("gcc") is not None and shutil.which("make") is not None, "gcc and make are not installed")
    proc = subprocess.run(["make", "-C", str(EMBED / "c"), "SANITIZE=1", f"PYTHON={sys.executable}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return EMBED / "c" / "build" / "edgevae-score-asan"


def run(scorer: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1"}
    return subprocess.run([str(scorer), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("method", METHODS)
def test_c_scores_agree_with_the_runtime(scorer: Path, bundle: Path, model, embed_inputs, method: str) -> None:  # type: ignore[no-untyped-def]
    inputs = without_png(embed_inputs)
    proc = run(scorer, "-m", str(bundle), "--method", method, *inputs)
    assert proc.returncode == 0, proc.stderr
    assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr
    compare(model, [json.loads(line) for line in proc.stdout.splitlines()], inputs, method)


def test_c_default_method_is_the_bundles(scorer: Path, bundle: Path, model, embed_inputs) -> None:  # type: ignore[no-untyped-def]
    proc = run(scorer, "-m", str(bundle), *list(without_png(embed_inputs))[:3])
    assert proc.returncode == 0 and all(json.loads(r)["method"] == model.manifest.default_method
                                        for r in proc.stdout.splitlines())


@pytest.mark.parametrize("method", ["combined", "kl", "local", "defect"])
def test_c_scores_large_images_by_tiles_as_the_runtime(scorer: Path, tiled_bundle: Path, tiled_model, tiled_inputs,
                                                       method: str) -> None:  # type: ignore[no-untyped-def]
    inputs = {k: v for k, v in tiled_inputs.items() if not k.endswith(".png")}
    proc = run(scorer, "-m", str(tiled_bundle), "--method", method, *inputs)
    assert proc.returncode == 0 and "Sanitizer" not in proc.stderr, proc.stderr
    compare_tiled(tiled_model, [json.loads(line) for line in proc.stdout.splitlines()], inputs, method)


@pytest.mark.parametrize("method", ["combined", "defect"])
def test_c_runs_a_full_resolution_ensemble_head_as_the_runtime(scorer: Path, ensemble_tiled_bundle: Path,
        tiled_inputs, method: str) -> None:  # type: ignore[no-untyped-def]
    check_ensemble_head(lambda *a: run(scorer, *a), ensemble_tiled_bundle, without_png(tiled_inputs), method)


def test_c_tiled_refusals_and_bad_files(scorer: Path, tiled_bundle: Path, tiled_inputs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = next(k for k in tiled_inputs if k.endswith(".pgm"))
    check_tiled_refusals(lambda *a: run(scorer, *a), tiled_bundle, tmp_path, good)
    check_tiled_bad_files(lambda *a: run(scorer, *a), tiled_bundle, tmp_path, good)


def test_c_refuses_a_tampered_graph_and_reports_bad_inputs(scorer: Path, bundle: Path, tampered: Path,
                                                            tmp_path: Path, embed_inputs) -> None:  # type: ignore[no-untyped-def]
    proc = run(scorer, "-m", str(tampered), *list(embed_inputs)[:1])
    assert proc.returncode == 1 and "does not match the manifest" in proc.stderr and proc.stdout == ""
    big = tmp_path / "big.pgm"
    big.write_bytes(b"P5 30 30 255\n" + bytes(900))
    short = tmp_path / "short.f32"
    np.zeros(5, "<f4").tofile(short)
    good = list(without_png(embed_inputs))[0]
    proc = run(scorer, "-m", str(bundle), str(big), good, str(short), str(tmp_path / "missing.pgm"))
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 2 and [("error" in r) for r in rows] == [True, False, True, True]
    assert "the bundle takes 28x28" in rows[0]["error"] and "expected 784 float32" in rows[2]["error"]
    assert "Sanitizer" not in proc.stderr


@pytest.mark.parametrize("method", ("kl", "smooth_recon", "elbo"))
def test_c_scores_an_rgb_bundle_like_the_runtime(scorer: Path, rgb_bundle: Path, rgb_inputs, method: str) -> None:  # type: ignore[no-untyped-def]
    from edgevae.runtime import load

    inputs = without_png(rgb_inputs)
    proc = run(scorer, "-m", str(rgb_bundle), "--method", method, *inputs)
    assert proc.returncode == 0 and "Sanitizer" not in proc.stderr, proc.stderr
    with load(rgb_bundle, ["CPUExecutionProvider"]) as model:
        compare(model, [json.loads(line) for line in proc.stdout.splitlines()], inputs, method)


@pytest.mark.parametrize("portable", [False, True])
def test_c_sha256_matches_hashlib_at_every_padding_length(tmp_path: Path, portable: bool) -> None:
    """Both block paths (SHA extensions where the CPU has them, and portable C) against hashlib, 0..299 bytes."""
    import hashlib

    need(shutil.which("gcc") is not None, "gcc is not installed")
    harness = tmp_path / "h.c"
    harness.write_text('#include <stdio.h>\n#include "sha256.h"\nint main(void){unsigned char d[300];char o[65];'
                       'for(int i=0;i<300;i++)d[i]=(unsigned char)(i*7+3);'
                       'for(int n=0;n<300;n++){sha256_hex(d,(size_t)n,o);puts(o);}return 0;}\n')
    flags = ["-DEDGEVAE_PORTABLE_SHA256"] if portable else []
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", *flags, "-I", str(EMBED / "c" / "src"), "-o",
                    str(tmp_path / "h"), str(harness), str(EMBED / "c" / "src" / "sha256.c")], check=True)
    got = subprocess.run([str(tmp_path / "h")], capture_output=True, text=True, check=True).stdout.split()
    data = bytes((i * 7 + 3) % 256 for i in range(300))
    assert got == [hashlib.sha256(data[:n]).hexdigest() for n in range(300)]


def test_c_verifies_signed_bundles(scorer: Path, signed_bundles: dict[str, Path], embed_inputs) -> None:  # type: ignore[no-untyped-def]
    from .conftest import REFUSALS, check_signature_refusals

    image = list(without_png(embed_inputs))[0]
    check_signature_refusals(lambda *args: run(scorer, *args), signed_bundles, image)
    stranger = str(signed_bundles["stranger"])
    env = {**os.environ, "EDGEVAE_TRUSTED_KEYS": stranger}
    proc = subprocess.run([str(scorer), "-m", str(signed_bundles["signed"]), image], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 1 and REFUSALS["stranger"] in proc.stderr


def test_c_canonical_json_matches_python(tmp_path: Path) -> None:
    """The C canonical form of numbers, strings and nested objects is byte for byte the Python runtime's."""
    from edgevae.runtime.signing import canonical_json

    need(shutil.which("gcc") is not None, "gcc is not installed")
    rng = np.random.default_rng(0)
    numbers = np.concatenate([rng.standard_normal(400) * 10.0 ** rng.integers(-12, 25, 400), [0.0, -0.0, 1e21, 1e-7,
                              1e-6, 5e-324, 1.7976931348623157e308, 123456789012345680000.0, 0.1, 100.0],
                              2.0 ** np.arange(-80, 80),  # at a power of two printf's rounding may not read back
                              rng.random(300).astype(np.float32).astype(np.float64)]).tolist()
    value = {"z": numbers, "a": {"s": "é \"q\" \\ \n\t\u0001", "b": [True, False, None, 3]}, "M": -2.5e-9}
    source = tmp_path / "in.json"
    source.write_text(json.dumps(value))
    harness = tmp_path / "c.c"
    harness.write_text('#include <stdio.h>\n#include <stdlib.h>\n#include "json.h"\n#include "signature.h"\n'
                       'int main(int c, char **v){ (void)c; FILE *f = fopen(v[1], "rb"); static char t[1 << 20];'
                       ' size_t n = fread(t, 1, sizeof t, f); fclose(f); char e[128]; json *j = json_parse(t, n, e, 128);'
                       ' size_t len; char *out = canonical_json(j, &len); fwrite(out, 1, len, stdout); free(out);'
                       ' json_free(j); return 0; }\n')
    src = EMBED / "c" / "src"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(src), "-o", str(tmp_path / "c"), str(harness),
                    str(src / "json.c"), str(src / "signature.c"), str(src / "sha256.c"), "-lcrypto", "-lm"], check=True)
    got = subprocess.run([str(tmp_path / "c"), str(source)], capture_output=True, check=True).stdout
    assert got == canonical_json(json.loads(source.read_text()))


def test_c_reads_what_each_method_needs_from_the_bundle(scorer: Path, bundle: Path, model, embed_inputs,  # type: ignore[no-untyped-def]
        legacy_bundle: Path, respecified: Path) -> None:
    check_specs_are_read(lambda *a: run(scorer, *a), model, bundle, legacy_bundle, respecified, without_png(embed_inputs))


def test_c_weighs_the_combined_scores_parts_as_the_runtime(scorer: Path, bundle: Path, model, embed_inputs,  # type: ignore[no-untyped-def]
        tmp_path: Path, tiled_bundle: Path, tiled_inputs) -> None:
    check_weights_are_read(lambda *a: run(scorer, *a), model, bundle, without_png(embed_inputs), tmp_path, tiled_bundle,
                           {k: v for k, v in tiled_inputs.items() if not k.endswith(".png")})


def test_c_survives_hostile_files_and_refuses_bad_options(scorer: Path, bundle: Path, embed_inputs,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    good = next(k for k in embed_inputs if k.endswith(".pgm"))
    check_hostile_inputs(lambda *a: run(scorer, *a), bundle, good, tmp_path)


def test_c_rows_carry_the_channel_warning_python_gives(scorer: Path, bundle: Path, tmp_path: Path) -> None:
    check_channel_warnings(lambda *a: run(scorer, *a), bundle, tmp_path)


def test_c_reads_netpbm_variants_as_pillow_does(scorer: Path, bundle: Path, tmp_path: Path, test_digits) -> None:  # type: ignore[no-untyped-def]
    check_netpbm_variants(lambda *a: run(scorer, *a), bundle, tmp_path, test_digits[0][0])


def test_c_gives_an_error_row_for_every_bad_file_of_the_corpus(scorer: Path, bundle: Path) -> None:
    check_bad_input_corpus(lambda *a: run(scorer, *a), bundle, "c")


def test_c_agrees_with_python_on_every_mutated_file(scorer: Path, bundle: Path) -> None:
    check_mutated_corpus(program_rows(lambda *a: run(scorer, *a), bundle, "smooth_recon"), bundle, "c")


@pytest.mark.parametrize("method", ["combined", "local", "defect", "elbo"])
def test_c_scores_a_fixed_camera_per_position_as_the_runtime(scorer: Path, fixed_camera, method: str) -> None:  # type: ignore[no-untyped-def]
    check_fixed_camera(lambda *a: run(scorer, *a), fixed_camera, method, png=False)

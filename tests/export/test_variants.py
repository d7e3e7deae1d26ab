"""Edge variants: int8 (static QDQ), fp16 and ORT-format graphs, validated, calibrated and loadable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgevae.export import ExportConfig, export_bundle
from edgevae.runtime import SCORE_METHODS, BundleError, load

pytestmark = [pytest.mark.export, pytest.mark.slow]


@pytest.fixture(scope="module")
def variant_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("variants") / "bundle"
    export_bundle(tiny_run, out, ExportConfig(elbo_samples=4, iwae_samples=16, variants=("int8", "fp16"), ort_format=True))
    return out


def test_manifest_lists_every_variant_with_checksums(variant_bundle: Path) -> None:
    raw = json.loads((variant_bundle / "edgevae.json").read_text())
    assert set(raw["variants"]) == {"int8", "fp16", "ort", "int8-ort", "fp16-ort"}
    for name, spec in raw["variants"].items():
        for graph in ("encoder", "decoder"):
            assert spec[graph] in raw["files"] and (variant_bundle / spec[graph]).exists()
        assert min(spec["rank_correlation"].values()) >= 0.9
        assert set(spec["calibration"]["methods"]) == set(SCORE_METHODS)
        assert set(spec["check_auroc"]["rel_recon"]) == {"fp32", "variant"}
    sizes = {k: v["bytes"] for k, v in raw["files"].items()}
    fp32 = sizes["encoder.onnx"] + sizes["decoder.onnx"]
    int8 = sizes["encoder.int8.onnx"] + sizes["decoder.int8.onnx"]
    # tiny models keep more fixed overhead than the default one: each graph embeds the manifest, calibration included
    assert int8 < 0.7 * fp32


def test_int8_keeps_the_input_convolution_in_float(variant_bundle: Path) -> None:
    import onnx

    from edgevae.export.variants import input_conv_nodes

    fp32 = onnx.load(str(variant_bundle / "encoder.onnx"))
    keep = input_conv_nodes(fp32, fp32.graph.input[0].name)
    ops = {n.name: n.op_type for n in fp32.graph.node}
    # the image convolution and its activation (the default encoder's ReLU; a SiLU would be Sigmoid + Mul),
    # nothing after the second convolution
    assert [ops[k] for k in keep] == ["Conv", "Relu"]
    int8 = onnx.load(str(variant_bundle / "encoder.int8.onnx"))
    by_name = {n.name: n for n in int8.graph.node}
    first = by_name[keep[0]]
    assert first.op_type == "Conv" and first.input[0] == fp32.graph.input[0].name  # reads the float image itself
    quantized_weights = {n.output[0] for n in int8.graph.node if n.op_type == "DequantizeLinear"}
    assert first.input[1] not in quantized_weights
    other_convs = [n for n in int8.graph.node if n.op_type == "Conv" and n.name != first.name]
    assert other_convs and all(n.input[1] in quantized_weights for n in other_convs)
    decoder = onnx.load(str(variant_bundle / "decoder.onnx"))
    assert input_conv_nodes(decoder, decoder.graph.input[0].name) == []


@pytest.mark.parametrize("variant, tolerance", [("fp16", 2e-2), ("ort", 1e-5), ("int8", 0.5), ("int8-ort", 0.5)])
def test_variants_agree_with_fp32(variant_bundle: Path, test_digits, variant: str, tolerance: float) -> None:  # type: ignore[no-untyped-def]
    fp32 = load(variant_bundle)
    other = load(variant_bundle, variant=variant)
    assert other.variant == variant
    x = test_digits[0][:40]
    mu_a = fp32.encode(x).mu
    mu_b = other.encode(x).mu
    assert np.max(np.abs(mu_a - mu_b)) <= tolerance
    a, b = fp32.raw_scores(x, "rel_recon"), other.raw_scores(x, "rel_recon")
    corr = np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1]
    assert corr > 0.9
    result = other.score(x, "rel_recon")
    assert result.threshold == other.manifest.calibration["rel_recon"].threshold


def test_unknown_variant_and_tampered_variant(variant_bundle: Path, tmp_path: Path) -> None:
    import shutil

    with pytest.raises(BundleError, match="available: fp32, int8"):
        load(variant_bundle, variant="int4")
    copy = tmp_path / "b"
    shutil.copytree(variant_bundle, copy)
    data = bytearray((copy / "decoder.int8.onnx").read_bytes())
    data[-5] ^= 0xFF
    (copy / "decoder.int8.onnx").write_bytes(bytes(data))
    load(copy)  # fp32 graphs are untouched
    with pytest.raises(BundleError, match="sha256"):
        load(copy, variant="int8")


def test_cli_variant_option(variant_bundle: Path, sample_folder: Path) -> None:
    from click.testing import CliRunner

    from edgevae.cli import main

    r = CliRunner().invoke(main, ["score", str(sample_folder), "-m", str(variant_bundle), "--variant", "int8-ort",
                                  "--format", "jsonl"])
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 16
    r = CliRunner().invoke(main, ["info", str(variant_bundle)])
    assert "int8-ort" in r.output


def test_input_conv_nodes_on_hand_built_graphs() -> None:
    import onnx
    from onnx import TensorProto, helper

    from edgevae.export.variants import input_conv_nodes

    def graph(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y]))

    relu = graph([helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
                  helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
                  helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
                  helper.make_node("Relu", ["c2"], ["y"], name="relu2")])
    assert input_conv_nodes(relu, "x") == ["conv1", "relu1"]
    silu = graph([helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
                  helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
                  helper.make_node("Mul", ["c1", "s1"], ["m1"], name="silu1"),
                  helper.make_node("Mul", ["m1", "scale"], ["y"], name="scaled")])  # reads a weight: not the activation
    assert input_conv_nodes(silu, "x") == ["conv1", "sig1", "silu1"]
    no_conv = graph([helper.make_node("Mul", ["x", "scale"], ["m"], name="pre"),
                     helper.make_node("Conv", ["m", "w1"], ["y"], name="conv1")])
    assert input_conv_nodes(no_conv, "x") == []


def test_recalibrate_covers_every_variant(variant_bundle: Path, test_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json
    import shutil

    from edgevae.runtime.recalibrate import recalibrate

    copy = tmp_path / "b"
    shutil.copytree(variant_bundle, copy)
    x, y = test_digits
    raw = recalibrate(copy, x[y <= 1][:60], mode="replace")
    assert set(raw["variants"]) == set(json.loads((variant_bundle / "edgevae.json").read_text())["variants"])
    for name in [None, *raw["variants"]]:
        with load(copy, ["CPUExecutionProvider"], variant=name) as model:
            assert len(model.manifest.calibration["kl"].scores) == 60
    raw = recalibrate(copy, x[y <= 1][60:120], mode="pool")  # every variant pools with its own stored scores
    for section in [raw["calibration"], *(v["calibration"] for v in raw["variants"].values())]:
        assert section["n"] == 120 and section["recalibration"]["decision"] == "pooled"
        assert len(section["methods"]["kl"]["scores"]) == 120


def test_every_variant_encodes_the_same_in_slices_and_in_one_call(variant_bundle: Path, test_digits) -> None:  # type: ignore[no-untyped-def]
    """The encoder alone runs large batches in concurrent slices (int8 graphs gain most); every row is what one
    call on the whole batch gives, for every variant."""
    x = test_digits[0][:200]  # 200 // 32 >= 3: three slices
    for variant in ("int8", "int8-ort", "fp32", "fp16"):
        sliced = load(variant_bundle, ["CPUExecutionProvider"], variant=variant, slice_workers=3)
        single = load(variant_bundle, ["CPUExecutionProvider"], variant=variant, slice_workers=1)
        for got, want in zip(sliced.encode(x), single.encode(x)):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(sliced.score(x, "kl").is_outlier, single.score(x, "kl").is_outlier)

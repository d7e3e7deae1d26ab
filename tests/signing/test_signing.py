"""Signed bundles: keys, the signature, and every refusal a device relies on."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgevae.cli import main
from edgevae.runtime import BundleError, SigningKeyError, generate_key, load, sign_bundle
from edgevae.runtime.bundle import sha256_hex
from edgevae.runtime.signing import SIGNATURE_FILE, TRUSTED_KEYS_ENV, canonical_json, ecmascript_number

pytest.importorskip("cryptography")
pytestmark = pytest.mark.runtime
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    owner, owner_pub, _ = generate_key(folder / "owner")
    other, other_pub, _ = generate_key(folder / "other")
    return {"owner": owner, "owner_pub": owner_pub, "other": other, "other_pub": other_pub}


@pytest.fixture()
def signed(bundle: Path, keys: dict[str, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "signed"
    shutil.copytree(bundle, copy)
    sign_bundle(copy, keys["owner"])
    return copy


def _rewrite(bundle: Path, change) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((bundle / "edgevae.json").read_text())
    change(manifest)
    (bundle / "edgevae.json").write_text(json.dumps(manifest, indent=2))


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys: dict[str, Path]) -> None:
    assert stat.S_IMODE(os.stat(keys["owner"]).st_mode) == 0o600
    assert b"PRIVATE KEY" in keys["owner"].read_bytes() and b"PUBLIC KEY" in keys["owner_pub"].read_bytes()
    with pytest.raises(SigningKeyError, match="exists already"):
        generate_key(keys["owner"])


def test_signed_bundle_loads_with_its_key_and_survives_reserialising(signed: Path, keys: dict[str, Path],
                                                                     test_digits) -> None:  # type: ignore[no-untyped-def]
    with load(signed, CPU, trusted_keys=[keys["owner_pub"]]) as model:
        assert model.raw_scores(test_digits[0][:4]).shape == (4,)
    raw = json.loads((signed / "edgevae.json").read_text())
    reordered = dict(reversed(list(raw.items())))  # other key order, no indentation: the same canonical manifest
    (signed / "edgevae.json").write_text(json.dumps(reordered))
    load(signed, CPU, trusted_keys=[keys["owner_pub"], keys["other_pub"]]).close()


def test_refusals(bundle: Path, signed: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(BundleError, match="not signed"):
        load(bundle, CPU, trusted_keys=[keys["owner_pub"]])
    with pytest.raises(BundleError, match="not a trusted key"):
        load(signed, CPU, trusted_keys=[keys["other_pub"]])
    load(signed, CPU).close()  # without keys: loads as an unsigned bundle always did


def test_graph_swapped_and_manifest_rehashed_is_refused(signed: Path, keys: dict[str, Path]) -> None:
    graph = signed / "decoder.onnx"
    data = graph.read_bytes().replace(b"edgevae", b"EDGEVAE", 1)  # an altered graph (same size)
    graph.write_bytes(data)
    _rewrite(signed, lambda m: m["files"]["decoder.onnx"].update(sha256=sha256_hex(data)))
    load(signed, CPU, trusted_keys=[]).close()  # the checksums alone cannot tell
    with pytest.raises(BundleError, match="altered after it was signed"):
        load(signed, CPU, trusted_keys=[keys["owner_pub"]])


def test_variant_added_after_signing_is_refused(signed: Path, keys: dict[str, Path]) -> None:
    shutil.copy(signed / "encoder.onnx", signed / "encoder.evil.onnx")
    shutil.copy(signed / "decoder.onnx", signed / "decoder.evil.onnx")

    def add(m: dict) -> None:  # type: ignore[type-arg]
        for g in ("encoder", "decoder"):
            data = (signed / f"{g}.evil.onnx").read_bytes()
            m["files"][f"{g}.evil.onnx"] = {"sha256": sha256_hex(data), "bytes": len(data)}
        m["variants"]["evil"] = {"encoder": "encoder.evil.onnx", "decoder": "decoder.evil.onnx", "format": "onnx",
                                 "calibration": m["calibration"]}

    _rewrite(signed, add)
    with pytest.raises(BundleError, match="altered after it was signed"):
        load(signed, CPU, variant="evil", trusted_keys=[keys["owner_pub"]])


def test_truncated_signature_and_changed_listed_file_are_refused(signed: Path, keys: dict[str, Path]) -> None:
    sig = signed / SIGNATURE_FILE
    text = sig.read_text()
    sig.write_text(text[: len(text) // 2])
    with pytest.raises(BundleError, match="damaged or truncated"):
        load(signed, CPU, trusted_keys=[keys["owner_pub"]])
    sig.write_text(text)
    graph = signed / "encoder.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="sha256"):
        load(signed, CPU, trusted_keys=[keys["owner_pub"]])


def test_trusted_keys_from_the_environment(bundle: Path, signed: Path, keys: dict[str, Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRUSTED_KEYS_ENV, os.pathsep.join([str(keys["other_pub"]), str(keys["owner_pub"])]))
    load(signed, CPU).close()
    with pytest.raises(BundleError, match="not signed"):
        load(bundle, CPU)
    load(bundle, CPU, trusted_keys=[]).close()  # an explicit empty list switches the check off


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_signed_manifest_never_loads(signed: Path, keys: dict[str, Path], data: st.DataObject) -> None:
    original = (signed / "edgevae.json").read_text()
    manifest = json.loads(original)
    leaves: list[tuple[list, object]] = []  # type: ignore[type-arg]

    def walk(node: object, path: list) -> None:  # type: ignore[type-arg]
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list) and node:
            walk(node[data.draw(st.integers(0, len(node) - 1))], path + [None])  # one element per list
        else:
            leaves.append((path, node))

    walk(manifest, [])
    path, value = data.draw(st.sampled_from(leaves))
    if isinstance(value, bool):
        new: object = not value
    elif isinstance(value, (int, float)):
        new = value + data.draw(st.sampled_from([1, -1, 0.5, 1e-3]))
    elif isinstance(value, str):
        new = value + data.draw(st.sampled_from(["x", " ", "0"]))
    else:
        new = 0
    node = manifest
    for key in path[:-1]:
        node = node[key] if key is not None else node[0]
    try:
        if path[-1] is None:
            node[0] = new
        else:
            node[path[-1]] = new
        (signed / "edgevae.json").write_text(json.dumps(manifest, indent=2))
        if canonical_json(json.loads(original)) == canonical_json(manifest):
            return  # e.g. 1e-3 added to 1e20 rounds away: nothing changed
        with pytest.raises(BundleError):
            load(signed, CPU, trusted_keys=[keys["owner_pub"]])
    finally:
        (signed / "edgevae.json").write_text(original)


def test_numbers_are_canonical_as_javascript_prints_them() -> None:
    cases = {0.0: "0", -0.0: "0", 1.0: "1", 1e21: "1e+21", 1e20: "100000000000000000000", 1e-7: "1e-7",
             1e-6: "0.000001", 123.456: "123.456", 5e-324: "5e-324", 1.7976931348623157e308: "1.7976931348623157e+308",
             333333333.3333333: "333333333.3333333", -1.5e-9: "-1.5e-9", np.float64(0.1): "0.1",
             2.0 ** -24: "5.960464477539063e-8"}
    for value, text in cases.items():
        assert ecmascript_number(float(value)) == text
    assert canonical_json({"b": [1, 2.5, True, None], "a": "é\n"}) == '{"a":"é\\n","b":[1,2.5,true,null]}'.encode()


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_canonical_numbers_match_node(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(300) * 10.0 ** rng.integers(-12, 25, 300),
                             rng.random(100), np.float32(rng.random(100)).astype(np.float64),
                             2.0 ** np.arange(-80, 80)]).tolist()
    script = "const v = JSON.parse(require('fs').readFileSync(0, 'utf8')); console.log(JSON.stringify(v));"
    out = subprocess.run(["node", "-e", script], input=json.dumps(values), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == canonical_json(values).decode()


def test_cli_keygen_sign_info_and_refusals(bundle: Path, tmp_path: Path, sample_folder: Path) -> None:
    runner = CliRunner()
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    r = runner.invoke(main, ["keygen", "-o", str(tmp_path / "k")])
    assert r.exit_code == 0 and "fingerprint sha256:" in r.output, r.output
    r = runner.invoke(main, ["info", str(copy)])
    assert r.exit_code == 0 and "unsigned" in r.output
    r = runner.invoke(main, ["sign", str(copy), "--key", str(tmp_path / "k")])
    assert r.exit_code == 0 and "signed" in r.output, r.output
    r = runner.invoke(main, ["info", str(copy), "--trusted-key", str(tmp_path / "k.pub")])
    assert r.exit_code == 0 and "signed by sha256:" in r.output and "valid" in r.output, r.output
    normal = str(sample_folder / "normal")
    r = runner.invoke(main, ["score", normal, "-m", str(copy), "--trusted-key", str(tmp_path / "k.pub")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["score", normal, "-m", str(bundle), "--trusted-key", str(tmp_path / "k.pub")])
    assert r.exit_code == 1 and "not signed" in r.output
    runner.invoke(main, ["keygen", "-o", str(tmp_path / "other")])
    r = runner.invoke(main, ["generate", "-m", str(copy), "--trusted-key", str(tmp_path / "other.pub"),
                             "-o", str(tmp_path / "g.png")])
    assert r.exit_code == 1 and "not a trusted key" in r.output and not (tmp_path / "g.png").exists()
    r = runner.invoke(main, ["encode", normal, "-m", str(copy), "--trusted-key", str(tmp_path / "missing.pub"),
                             "-o", str(tmp_path / "z.npy")])
    assert r.exit_code == 1 and "cannot read the key file" in r.output
    manifest = json.loads((copy / "edgevae.json").read_text())
    manifest["calibration"]["methods"]["smooth_recon"]["threshold"] *= 10  # altered after signing
    (copy / "edgevae.json").write_text(json.dumps(manifest))
    r = runner.invoke(main, ["score", normal, "-m", str(copy), "--trusted-key", str(tmp_path / "k.pub")])
    assert r.exit_code == 1 and "altered after it was signed" in r.output
    r = runner.invoke(main, ["info", str(copy)])
    assert r.exit_code == 0 and "altered after signing" in r.output
    r = runner.invoke(main, ["keygen", "-o", str(tmp_path / "k")])
    assert r.exit_code == 1 and "exists already" in r.output


@pytest.mark.export
def test_export_signs_before_the_bundle_appears(tiny_run: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    from edgevae.export import ExportConfig, export_bundle

    model = export_bundle(tiny_run, tmp_path / "b", ExportConfig(elbo_samples=2, iwae_samples=4), sign_key=keys["owner"])
    model.close()
    load(tmp_path / "b", CPU, trusted_keys=[keys["owner_pub"]]).close()


def test_keys_without_the_sign_extra_give_the_install_hint(bundle: Path, tmp_path: Path) -> None:
    blocker = r"""
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "cryptography":
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Blocker())
from edgevae.cli import main
main(sys.argv[1:], prog_name="edgevae")
"""
    key = tmp_path / "k.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")
    proc = subprocess.run([sys.executable, "-c", blocker, "generate", "-m", str(bundle), "--trusted-key", str(key),
                           "-o", str(tmp_path / "g.png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "signed bundles need the sign extra: pip install 'edgevae[sign]'" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", blocker, "info", str(bundle)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "unsigned" in proc.stdout  # without keys, nothing needs the extra

"""The runtime path works, and loads neither torch nor onnx, where both are unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.runtime, pytest.mark.cli]

BLOCKER = r"""
import importlib.abc, json, sys
BLOCKED = ("torch", "onnx", "onnxscript")
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Blocker())
from edgevae.cli import main
code = 0
try:
    main(sys.argv[1:], prog_name="edgevae")
except SystemExit as exc:
    code = exc.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("LOADED=" + json.dumps(loaded), file=sys.stderr)
sys.exit(code)
"""


def run_blocked(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, timeout=120)


def test_score_works_without_torch_and_onnx(bundle: Path, sample_folder: Path) -> None:
    proc = run_blocked("score", str(sample_folder), "-m", str(bundle), "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 16 and all("p_value" in r for r in rows)
    assert 'LOADED=[]' in proc.stderr


def test_generate_and_info_work_without_torch(bundle: Path, tmp_path: Path) -> None:
    proc = run_blocked("generate", "-m", str(bundle), "-n", "4", "-o", str(tmp_path / "g.png"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "g.png").stat().st_size > 0
    proc = run_blocked("info", str(bundle))
    assert proc.returncode == 0 and "encoder.onnx" in proc.stdout


def test_train_without_torch_gives_install_hint() -> None:
    proc = run_blocked("train", "--epochs", "1")
    assert proc.returncode == 1
    assert "edgevae train needs the training extra: pip install 'edgevae[train]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_runtime_sources_never_import_torch_or_onnx() -> None:
    root = Path(__file__).resolve().parents[2] / "runtime"
    for path in root.glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                module = stripped.split()[1].split(".")[0]
                assert module not in ("torch", "onnx", "onnxscript"), f"{path.name}: {stripped}"

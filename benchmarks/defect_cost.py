"""What the defect head costs the default score, and what narrower heads would cost, measured side by side.

The real-image benchmark trains every model at its defaults and measures `combined` against the default before the
head once, at the end of a long run. This script isolates the head's share on the same kind of input (the inspection
task, 64x64 RGB) in one run, alone on the machine:

1. a VAE trained briefly on the inspection task's normal images at the training defaults' architecture (the
   architecture, not the weights, sets the time), exported twice: at the defaults (`combined` with the head) and
   without the head (`combined` of local, smooth_recon, elbo: the previous default);
2. `combined` of both bundles at batch 256, in alternating rounds (best of each);
3. the head graph alone (exported from untrained heads of several widths, and the shipped widths with a
   full-resolution stage at each end, ``train --defect-resolution full``; with the runtime's session options) at
   batch 256, its multiply-accumulates counted from the convolutions it runs.

The predicted throughput of the default with another head width is the measured default's time with the shipped
head's time replaced by that head's time (the defect score's own post-processing is unchanged). Quality of a narrower
head is not measured here: it needs the real-image benchmark.

Usage:
    python benchmarks/defect_cost.py            # about 3 min here
    python benchmarks/defect_cost.py --smoke    # tiny

Writes benchmarks/results/defect_cost.json and the defect_cost section of docs/benchmarks.md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevae.export.graphs import export_defect_graph
from edgevae.runtime import load
from edgevae.runtime.options import OPSET
from edgevae.runtime.sessions import create_session
from edgevae.training.defect_head import DefectHead

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import benchmark_parser, save_report  # noqa: E402  (a sibling script module)
from real_images import PREVIOUS_PARTS, inspection  # noqa: E402

# (widths, resolution) of the heads timed alone; the first is the shipped head.
HEADS = (((16, 32, 64), "half"), ((12, 24, 48), "half"), ((8, 16, 32), "half"), ((16, 16, 32), "half"),
         ((24, 48, 96), "half"), ((16, 32, 64), "full"))
BATCH = 256
ROUNDS = 7


def conv_macs(head: torch.nn.Module, size: int, channels: int) -> int:
    """Multiply-accumulates of the head's convolutions on one size x size image."""
    total = 0

    def count(module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, torch.nn.Conv2d)
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += int(output[0].numel()) * k

    hooks = [m.register_forward_hook(count) for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        head(torch.zeros(1, channels, size, size))
    for h in hooks:
        h.remove()
    return total


def best_time(fn: Any, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def bundles(work: Path, train: np.ndarray, smoke: bool) -> tuple[Any, Any]:
    cli = [str(Path(sys.executable).with_name("edgevae"))]
    data = work / "inspection.npy"
    np.save(data, train)
    epochs, steps = ("1", "5") if smoke else ("3", "50")
    subprocess.run(cli + ["train", "--data", str(data), "-o", str(work / "run"), "--epochs", epochs,
                          "--defect-steps", steps], check=True, capture_output=True)
    subprocess.run(cli + ["export", str(work / "run"), "-o", str(work / "default"), "--force"], check=True,
                   capture_output=True)
    subprocess.run(cli + ["export", str(work / "run"), "-o", str(work / "previous"), "--force", "--no-defect-head",
                          "--combine", ",".join(PREVIOUS_PARTS)], check=True, capture_output=True)
    return load(work / "default", ["CPUExecutionProvider"]), load(work / "previous", ["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__ or "", "defect_cost")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    size, rounds = 64, (2 if args.smoke else ROUNDS)
    task = inspection(size, 40 if args.smoke else 300, BATCH, seed=0)
    x = task.normal[:BATCH].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    with tempfile.TemporaryDirectory(prefix="edgevae-defect-cost-") as tmp:
        default, previous = bundles(Path(tmp), task.train, args.smoke)
        runs = {"default": lambda: default.raw_scores(x, "combined"), "previous": lambda: previous.raw_scores(x, "combined")}
        for run in runs.values():  # warm-up
            run()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):  # alternating rounds: a slow moment hits both
            for name, run in runs.items():
                started_round = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started_round)
        t_default, t_previous = min(times["default"]), min(times["previous"])
    heads = []
    for widths, resolution in HEADS:
        head = DefectHead(3, widths, resolution=resolution).eval()
        graph = export_defect_graph(head, x[:8], OPSET)
        session = create_session(graph.SerializeToString(), "auto", name="defect.onnx")
        feed = {session.get_inputs()[0].name: x}
        heads.append({"widths": list(widths), "resolution": resolution,
                      "weights": sum(p.numel() for p in head.parameters()),
                      "macs_per_image": conv_macs(head, size, 3),
                      "seconds": best_time(lambda: session.run(None, feed), rounds)})
    shipped = heads[0]["seconds"]
    for h in heads:
        h["predicted_default_images_per_second"] = BATCH / (t_default - shipped + h["seconds"])
        h["predicted_ratio"] = h["predicted_default_images_per_second"] / (BATCH / t_previous)
    report = {"batch": BATCH, "rounds": rounds, "default_images_per_second": BATCH / t_default,
              "previous_images_per_second": BATCH / t_previous, "ratio": t_previous / t_default, "heads": heads}
    save_report("defect_cost", report, markdown, args, started)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "## What the defect head costs the default (inspection task, 64x64 RGB)",
        "",
        f"Measured by `python benchmarks/defect_cost.py` on {report['machine']}, {report['date']}; total "
        f"{report['seconds'] / 60:.1f} min, alone on the machine. Raw results: `benchmarks/results/defect_cost.json`. "
        f"`combined` at batch {report['batch']}, best of {report['rounds']} alternating rounds: the default (with the "
        f"head) **{report['default_images_per_second']:,.0f}** images/s, the previous default (local, smooth_recon, "
        f"elbo; no head) **{report['previous_images_per_second']:,.0f}** images/s: **{report['ratio']:.2f}x** (goal "
        "≥ 0.7x). The head graph alone at several widths and resolutions (untrained: the time does not depend on the "
        "weights), and the default's throughput predicted with that head in place of the shipped one; a narrower head's quality "
        "is not measured here.",
        "",
        "| head widths | weights | MMAC per image | head alone, ms per batch | default with it, images/s (predicted) "
        "| vs previous default |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, h in enumerate(report["heads"]):
        name = ", ".join(map(str, h["widths"])) + (", full resolution" if h.get("resolution") == "full" else "")
        name += " (shipped)" if i == 0 else ""
        lines.append(f"| {name} | {h['weights']:,} | {h['macs_per_image'] / 1e6:.1f} | {h['seconds'] * 1e3:.1f} | "
                     f"{h['predicted_default_images_per_second']:,.0f} | {h['predicted_ratio']:.2f}x |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()

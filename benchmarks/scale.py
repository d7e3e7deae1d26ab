"""Scale-out: Ray Data and Spark batch scoring with 1 and 2 workers against the plain runtime loop, and
torchrun/DDP training on 1 and 2 processes; writes benchmarks/results/scale.json and a docs/benchmarks.md section.

Scoring: N PNG files of digits (the default 100,000) are scored with the bundle's default method by
- the plain loop: one process, ``BatchScorer.score_items`` over batches of paths, one onnxruntime thread;
- Ray Data: ``from_paths`` + ``score_dataset`` on an actor pool of 1 and of 2 actors (``ray.init(num_cpus=2)``),
  and ``read_files`` (Ray reads the bytes) with 2 actors;
- Spark: ``binaryFile`` + ``score_dataframe`` on ``local[1]`` and ``local[2]``, written to Spark's ``noop`` sink.
Engine start-up (``ray.init``, the Spark session) is measured apart; the job times include reading the files.
The plain loop runs before and after the engines; the faster run is the reference (the machine is shared).
The engine overhead per image is (1 / engine rate with 1 worker) - (1 / plain-loop rate).

Training: the embedded digits for a few epochs with the same seed and global batch by ``edgevae train`` (one
process, PyTorch's default threads) and by ``torchrun --nproc-per-node 1`` and ``2`` (one thread per process, as
torchrun sets it); images per second, and the time each run takes to reach the validation ELBO that all of them
reach.

    python benchmarks/scale.py            # about 10 minutes here
    python benchmarks/scale.py --smoke    # tiny sizes: checks that it runs
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import benchmark_parser, save_report  # noqa: E402

DDP_BATCHES = (64, 256)  # the default global batch, and a larger one (less all-reduce per image)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = benchmark_parser(__doc__ or "", "scale").parse_args(argv)
    started = time.perf_counter()
    n_images, ddp_epochs = (1_000, 1) if args.smoke else (100_000, 6)
    report: dict[str, Any] = {"images": n_images}
    with tempfile.TemporaryDirectory(prefix="edgevae-scale-") as tmp:
        work = Path(tmp)
        bundle = _bundle(work, args.smoke)
        folder = _png_files(work / "png", n_images)
        report["method"] = json.loads((bundle / "edgevae.json").read_text())["scoring"]["default_method"]
        before = _plain_loop(bundle, folder)
        print("plain loop", before, flush=True)
        report["ray"] = _ray(bundle, folder, n_images)
        print("ray", report["ray"], flush=True)
        report["spark"] = _spark(bundle, folder, n_images)
        print("spark", report["spark"], flush=True)
        after = _plain_loop(bundle, folder)  # measured again: the faster of the two is the less disturbed one
        report["plain_loop"] = {**max(before, after, key=lambda r: r["images_per_s"]),
                                "runs_images_per_s": [before["images_per_s"], after["images_per_s"]]}
        batches = DDP_BATCHES[-1:] if args.smoke else DDP_BATCHES  # smoke: the larger batch alone, fewest steps
        report["ddp"] = {str(b): _ddp(work / f"b{b}", ddp_epochs, b, args.smoke) for b in batches}
        print("ddp", report["ddp"], flush=True)
    plain = report["plain_loop"]["images_per_s"]
    for engine in ("ray", "spark"):
        one, two = (report[engine]["workers"][w]["images_per_s"] for w in ("1", "2"))
        report[engine]["speedup_2_vs_1"] = two / one
        report[engine]["overhead_us_per_image"] = 1e6 * (1 / one - 1 / plain)
    save_report("scale", report, markdown, args, started)
    return report


def _bundle(work: Path, smoke: bool) -> Path:
    """The digits model of the demo's recipe, shorter; exported with the default scoring."""
    from edgevae.export import ExportConfig, export_bundle
    from edgevae.training import DataSpec, TrainConfig, train

    smoke_head = {"defect_steps": 20} if smoke else {}  # a smoke run's head: runs every path, measures nothing
    train(DataSpec(), work / "run", None, TrainConfig(epochs=1 if smoke else 5, **smoke_head))
    export_bundle(work / "run", work / "bundle", ExportConfig())
    return work / "bundle"


def _png_files(folder: Path, n: int) -> Path:
    """n PNG files cycling through the embedded test digits, 1,000 per subfolder."""
    from PIL import Image

    from edgevae.training.data import embedded_split

    digits, _ = embedded_split("test")
    for i in range(n):
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        Image.fromarray(digits[i % len(digits)]).save(sub / f"{i:06d}.png")
    return folder


def _files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.png"))


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _plain_loop(bundle: Path, folder: Path) -> dict[str, float]:
    from edgevae.runtime.batch import BatchScorer

    files = _files(folder)
    scorer = BatchScorer(str(bundle), threads=1)
    scorer.score_items(files[:256])  # load the bundle and warm up outside the timing

    def run() -> int:
        failed = 0
        for start in range(0, len(files), 256):
            failed += sum(e is not None for e in scorer.score_items(files[start:start + 256])["error"])
        return failed

    seconds, failed = _timed(run)
    assert failed == 0, f"{failed} files failed"
    return {"seconds": seconds, "images_per_s": len(files) / seconds}


def _ray(bundle: Path, folder: Path, n: int) -> dict[str, Any]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from edgevae.runtime.ray_data import from_paths, read_files, score_dataset

    init_s, _ = _timed(lambda: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                                        configure_logging=False))
    out: dict[str, Any] = {"init_s": init_s, "workers": {}}
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        files = _files(folder)
        for workers, source in ((1, "paths"), (2, "paths"), (2, "bytes")):
            def job() -> Any:
                ds = from_paths(files) if source == "paths" else read_files(str(folder), blocks=max(8, n // 2000))
                return score_dataset(ds, bundle, workers=workers, batch_size=256).materialize()

            seconds, scored = _timed(job)
            assert scored.count() == n
            failed = int(scored.select_columns(["error"]).to_pandas()["error"].notna().sum())
            assert failed == 0, f"{failed} files failed on Ray"
            key = str(workers) if source == "paths" else f"{workers}, read_binary_files"
            out["workers"][key] = {"seconds": seconds, "images_per_s": n / seconds}
    finally:
        ray.shutdown()
    return out


def _spark(bundle: Path, folder: Path, n: int) -> dict[str, Any]:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    from edgevae.runtime.spark import score_dataframe

    out: dict[str, Any] = {"workers": {}}
    for workers in (1, 2):
        def session() -> Any:
            return (SparkSession.builder.master(f"local[{workers}]").appName("edgevae-scale")
                    .config("spark.ui.showConsoleProgress", "false")
                    .config("spark.ui.enabled", "false")
                    # many small files: without this each file counts as 4 MB and a task gets ~30 files
                    .config("spark.sql.files.openCostInBytes", str(64 * 1024)).getOrCreate())

        start_s, spark = _timed(session)
        spark.sparkContext.setLogLevel("ERROR")
        try:
            frames = spark.read.format("binaryFile").option("pathGlobFilter", "*.png") \
                .option("recursiveFileLookup", "true").load(str(folder))
            scored = score_dataframe(frames, bundle, batch_size=256)
            seconds, _ = _timed(lambda: scored.write.format("noop").mode("overwrite").save())
            failed = scored.filter("error is not null").count() if n <= 10_000 else None
            assert not failed, f"{failed} files failed on Spark"
            out["workers"][str(workers)] = {"seconds": seconds, "images_per_s": n / seconds, "session_s": start_s,
                                            "partitions": frames.rdd.getNumPartitions()}
        finally:
            spark.stop()
    return out


def _ddp(work: Path, epochs: int, batch: int, smoke: bool) -> dict[str, Any]:
    """edgevae train, torchrun x1 and torchrun x2 on the embedded digits: same seed, global batch and epochs."""
    data = ["--data", "embedded"] + (["--classes", "3"] if smoke else [])
    common = [*data, "--epochs", str(epochs), "--batch-size", str(batch)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    runs = {
        "edgevae train (1 process, default threads)": [sys.executable, "-m", "edgevae", "train"],
        "torchrun, 1 process (1 thread)": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                           "--nproc-per-node", "1", "-m", "edgevae", "train"],
        "torchrun, 2 processes (1 thread each)": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc-per-node", "2", "-m", "edgevae", "train"],
    }
    out: dict[str, Any] = {"epochs": epochs, "batch_size": batch, "runs": {}}
    for i, (name, cmd) in enumerate(runs.items()):
        run_dir = work / f"ddp{i}"
        wall, done = _timed(lambda: subprocess.run([*cmd, *common, "-o", str(run_dir)], env=env,
                                                   capture_output=True, text=True))
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        history = metrics["history"]
        train_s = history[-1]["seconds"]
        out["runs"][name] = {"wall_s": wall, "train_s": train_s,
                             "images_per_s": metrics["n_train"] * epochs / train_s,
                             "val_neg_elbo": [h["val_neg_elbo"] for h in history],
                             "seconds": [h["seconds"] for h in history]}
    target = max(r["val_neg_elbo"][-1] for r in out["runs"].values())  # an ELBO every run reaches
    out["target_val_neg_elbo"] = target
    for r in out["runs"].values():
        r["seconds_to_target"] = next(s for v, s in zip(r["val_neg_elbo"], r["seconds"]) if v <= target + 1e-9)
    return out


def markdown(r: dict[str, Any]) -> str:
    plain = r["plain_loop"]["images_per_s"]
    lines = [
        f"## Scale-out ({r['date']}, {r['machine']}{', smoke sizes' if r['smoke'] else ''})",
        "",
        f"`python benchmarks/scale.py`: {r['images']:,} PNG digits scored with `{r['method']}` (the bundle's "
        "default); job times include reading the files, engine start-up is apart. The machine has 2 cores, so 2 "
        "workers is the most it can show.",
        "",
        "| scorer | workers | images/s | vs plain loop | 2 vs 1 worker | overhead per image | start-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| plain loop (`BatchScorer`, 1 thread) | 1 | {plain:,.0f} | 1.00x | | | |",
    ]
    for engine, label in (("ray", "Ray Data (actor pool)"), ("spark", "Spark (`mapInPandas`)")):
        e = r[engine]
        for w in e["workers"]:
            rate = e["workers"][w]["images_per_s"]
            start = e.get("init_s", e["workers"][w].get("session_s", 0.0))
            speedup = f"{e['speedup_2_vs_1']:.2f}x" if w == "2" else ""
            overhead = f"{e['overhead_us_per_image']:.0f} µs" if w == "1" else ""
            source = {"ray": " from paths (`from_paths`)", "spark": " from bytes (`binaryFile`)"}[engine]
            if w.endswith("read_binary_files"):
                w, source = w.split(",")[0], " from bytes (`read_files`)"
            lines.append(f"| {label}{source} | {w} | {rate:,.0f} | {rate / plain:.2f}x | {speedup} | {overhead} "
                         f"| {start:.1f} s |")
    first = next(iter(r["ddp"].values()))
    lines += [
        "",
        f"Training: the embedded digits, {first['epochs']} epochs, the same seed; per global batch, the target is the "
        "validation -ELBO every run reaches.",
        "",
        "| global batch | training | images/s | vs 1 process | training time | to the target ELBO | final val -ELBO |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for batch, d in r["ddp"].items():
        base = next(iter(d["runs"].values()))["images_per_s"]
        for name, run in d["runs"].items():
            lines.append(f"| {batch} | {name} | {run['images_per_s']:,.0f} | {run['images_per_s'] / base:.2f}x | "
                         f"{run['train_s']:.1f} s | {run['seconds_to_target']:.1f} s | {run['val_neg_elbo'][-1]:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

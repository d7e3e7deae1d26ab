"""Coverage-guided fuzzing of the C program's readers with libFuzzer, under AddressSanitizer and UBSan.

Builds the harnesses (`make -C embed/c fuzz`, needs clang) and runs each for a fixed number of executions from the
seed corpus in embed/c/fuzz/corpus/<harness> (copied: the repository's corpus is not modified), with a fixed seed:

- `fuzz_input`: the input decoder (PGM/PPM in every variant it reads, raw float32), four model shapes;
- `fuzz_json`: the JSON reader every manifest goes through, member lookups and the canonical form a signature covers;
- `fuzz_signature`: a signature file checked against a fixed manifest and trusted key;
- `fuzz_manifest`: the manifest's fields as the program reads them (src/manifest.c): the input contract, each
  method's entry (method specs, or the fields older bundles carry), parts, calibration and tail, the map entry, then
  the p-value rule on what it accepted.

A crash, a sanitizer report or a leak stops a harness: its input is kept under benchmarks/results/fuzz-crashes/ (add
it to the seed corpus as a regression input once fixed) and the script exits with status 1.

Usage:
    python benchmarks/fuzz.py                 # 10,000,000 executions per harness
    python benchmarks/fuzz.py --runs 100000   # fewer
    python benchmarks/fuzz.py --smoke         # 20,000 each (what the embed tier runs)
    python benchmarks/fuzz.py --harness fuzz_manifest   # one harness; the others' rows are kept from the last run

Writes benchmarks/results/fuzz.json and the fuzz section of docs/benchmarks.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import ROOT, benchmark_parser, save_report  # noqa: E402  (a sibling script module)

C = ROOT / "embed" / "c"
HARNESSES = ("fuzz_input", "fuzz_json", "fuzz_signature", "fuzz_manifest")
RUNS = 10_000_000
SMOKE_RUNS = 20_000
MALLOC_LIMIT_MB = 2048  # a single allocation above this counts as a crash


def build() -> None:
    """Build the harnesses; raises with the compiler's output when that fails."""
    proc = subprocess.run(["make", "-C", str(C), "fuzz"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the fuzz harnesses failed (clang installed?):\n{proc.stdout}{proc.stderr}")


def run_one(name: str, runs: int, work: Path) -> dict[str, Any]:
    """One harness for ``runs`` executions from a copy of its seed corpus; its figures and outcome."""
    corpus = work / name
    shutil.copytree(C / "fuzz" / "corpus" / name, corpus)
    crashes = work / f"{name}-crashes"
    crashes.mkdir()
    started = time.perf_counter()
    proc = subprocess.run([str(C / "build" / "fuzz" / name), f"-runs={runs}", "-seed=1", f"-max_len={16384 if name == 'fuzz_manifest' else 8192}",
                           "-print_final_stats=1", f"-artifact_prefix={crashes}/",
                           # libFuzzer's RSS limit reads the process's peak RSS, which Linux carries over from the
                           # parent across fork and exec: started from a test run holding a few GB, every harness was
                           # "out of memory" after its first second. Single allocations are limited instead.
                           "-rss_limit_mb=0", f"-malloc_limit_mb={MALLOC_LIMIT_MB}", str(corpus)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log = proc.stderr
    executed = _stat(log, "stat::number_of_executed_units")
    found = sorted(p.name for p in crashes.iterdir())
    if found or proc.returncode != 0:
        print(f"{name} failed; the end of libFuzzer's log:\n" + "\n".join(log.splitlines()[-40:]), file=sys.stderr)
    if found:
        kept = ROOT / "benchmarks" / "results" / "fuzz-crashes"
        kept.mkdir(parents=True, exist_ok=True)
        for item in crashes.iterdir():
            shutil.copy(item, kept / f"{name}-{item.name}")
    return {"harness": name, "runs_requested": runs, "executed": executed, "seconds": seconds,
            "exec_per_second": executed / seconds if seconds > 0 else 0.0,
            "coverage_edges": _coverage(log), "corpus_files": len(list(corpus.iterdir())),
            "exit_code": proc.returncode, "crashes": found,
            "sanitizer_reports": len(re.findall(r"ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)"
                                                r"|runtime error:", log))}


def _stat(log: str, key: str) -> int:
    match = re.search(rf"{re.escape(key)}:\s*(\d+)", log)
    return int(match.group(1)) if match else 0


def _coverage(log: str) -> int:
    found = re.findall(r"cov: (\d+)", log)
    return int(found[-1]) if found else 0


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "## Fuzzing the C readers (libFuzzer, AddressSanitizer + UBSan)",
        "",
        f"Measured by `python benchmarks/fuzz.py` on {report['machine']}, {report['date']}; total "
        f"{report['seconds'] / 60:.1f} min. Raw results: `benchmarks/results/fuzz.json`. Harnesses and seed corpus: "
        f"embed/c/fuzz/. Each harness starts from its seed corpus with seed 1; a single allocation above "
        f"{MALLOC_LIMIT_MB / 1024:g} GB counts as a crash (libFuzzer's `-malloc_limit_mb`).",
        "",
        "| harness | what it reads | executions | exec/s | coverage (edges) | crashes | sanitizer reports |",
        "|---|---|---|---|---|---|---|",
    ]
    what = {"fuzz_input": "PGM/PPM (P2, P3, P5, P6, comments, maxval) and raw float32, 4 shapes",
            "fuzz_json": "the manifest's JSON, lookups, canonical form",
            "fuzz_signature": "edgevae.sig against a fixed manifest and key",
            "fuzz_manifest": "the manifest's fields as scoring reads them (contract, method specs, parts, "
                             "calibration, tails, map entry) and the p-value rule"}
    for r in report["harnesses"]:
        lines.append(f"| {r['harness']} | {what[r['harness']]} | {r['executed']:,} | {r['exec_per_second']:,.0f} | "
                     f"{r['coverage_edges']} | {len(r['crashes'])} | {r['sanitizer_reports']} |")
    lines += ["", "Not fuzzed: the noise, map and graph files themselves (read only after their sha256 matches the "
              "manifest, then length-checked against the shapes it states; covered by the embed tests), and the key "
              "file (read by OpenSSL's PEM reader).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__ or "", "fuzz")
    parser.add_argument("--runs", type=int, default=None, help=f"executions per harness (default {RUNS:,})")
    parser.add_argument("--harness", action="append", choices=HARNESSES,
                        help="run only this harness (repeatable); the other rows are kept from the last saved run")
    args = parser.parse_args(argv)
    runs = args.runs or (SMOKE_RUNS if args.smoke else RUNS)
    started = time.perf_counter()
    build()
    with tempfile.TemporaryDirectory(prefix="edgevae-fuzz-") as tmp:
        results = []
        for name in args.harness or HARNESSES:
            results.append(run_one(name, runs, Path(tmp)))
            r = results[-1]
            print(f"{name}: {r['executed']:,} executions in {r['seconds']:.0f} s, {len(r['crashes'])} crashes, "
                  f"{r['sanitizer_reports']} sanitizer reports", flush=True)
    if args.harness and Path(args.json).exists():  # keep the other harnesses' rows of the last full run
        import json

        kept = {r["harness"]: r for r in json.loads(Path(args.json).read_text()).get("harnesses", [])}
        kept.update({r["harness"]: r for r in results})
        results = [kept[h] for h in HARNESSES if h in kept]
    report: dict[str, Any] = {"runs": runs, "harnesses": results}
    save_report("fuzz", report, markdown, args, started)
    if any(r["crashes"] or r["sanitizer_reports"] or r["exit_code"] != 0 for r in results):
        print("the fuzzer found a failing input: see benchmarks/results/fuzz-crashes/", file=sys.stderr)
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()

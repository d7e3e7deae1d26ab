"""Design experiment: how should `combined` join its parts' p-values?

The shipped rule is the smallest p-value of the parts (-ln min p). With five parts, a part that carries no signal
on a task still takes its share of the false-positive budget (the defect head on digits, whose anomalies are other
digits, not local defects). This script trains models at the defaults (the command line, as
benchmarks/real_images.py does) on tasks of both kinds and scores each task's images with several rules, all from
the same part scores and the same stored references:

- `min_p` (shipped): -ln min over the five parts;
- `min_p_no_defect`: the same without the defect part (what the head costs where it carries no signal);
- `fisher`: the sum of -ln p over the parts (Fisher's method; evidence spread over parts adds up);
- `top2`: the sum of the two largest -ln p.

AUROC only (rankings); a rule that wins would still need its threshold calibrated the way `combined`'s is.
Usage: python benchmarks/combination_rules.py [--digits 2,3,8] [--tasks texture_gravel,photos]
Writes benchmarks/results/combination_rules.json and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import benchmark_parser, save_report  # noqa: E402
from real_images import Task, edgevae_model, photos, texture  # noqa: E402

RULES = ("min_p", "min_p_no_defect", "fisher", "top2")


def digit_task(d: int) -> Task:
    from edgevae.training.data import embedded_split

    x_train, y_train = embedded_split("train")
    x_test, y_test = embedded_split("test")
    return Task(f"digit_{d}", x_train[y_train == d][..., None], x_test[y_test == d][..., None],
                {"other_digits": x_test[y_test != d][..., None]})


def rule_scores(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every rule's statistic for images ``x``, from one computation of the parts."""
    refs = model.manifest.calibration_section.references
    parts = list(model.spec.combined_parts)
    raw = {p: np.concatenate([model.combined_parts(x[i:i + 256])[p] for i in range(0, len(x), 256)]) for p in parts}
    nlp = {p: -refs[p].log_p_values(raw[p]) for p in parts}
    stack = np.stack([nlp[p] for p in parts])
    no_defect = np.stack([nlp[p] for p in parts if p != "defect"])
    top = np.sort(stack, axis=0)[-2:]
    return {"min_p": stack.max(0), "min_p_no_defect": no_defect.max(0), "fisher": stack.sum(0), "top2": top.sum(0)}


def evaluate(task: Task, model: Any) -> dict[str, dict[str, float]]:
    normal = rule_scores(model, task.normal)
    out: dict[str, dict[str, float]] = {}
    for kind, x in task.anomalies.items():
        anomalous = rule_scores(model, x)
        truth = np.r_[np.zeros(len(task.normal)), np.ones(len(x))]
        out[kind] = {r: float(roc_auc_score(truth, np.r_[normal[r], anomalous[r]])) for r in RULES}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__ or "", "combination_rules")
    parser.add_argument("--digits", default="2,3,8")
    parser.add_argument("--tasks", default="texture_gravel,photos")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    epochs = 2 if args.smoke else None
    tasks = [digit_task(int(d)) for d in args.digits.split(",") if d]
    size, n_train, n_test = (32, 60, 20) if args.smoke else (64, 500, 100)
    for name in args.tasks.split(","):
        if name.startswith("texture_"):
            tasks.append(texture(name.removeprefix("texture_"), size, n_train, n_test))
        elif name == "photos":
            tasks.append(photos(size, n_train, n_test))
    report: dict[str, Any] = {"tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            print(f"== {task.name}", flush=True)
            model, _ = edgevae_model(task, Path(tmp), [], epochs)
            report["tasks"][task.name] = evaluate(task, model)
            print(report["tasks"][task.name], flush=True)
    save_report("combination_rules", report, markdown, args, started)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = ["## How `combined` joins its parts (design experiment)", "",
             f"Measured by `python benchmarks/combination_rules.py` on {report['machine']}, {report['date']}; "
             f"{report['seconds'] / 60:.1f} min." + (" **Smoke run.**" if report["smoke"] else ""), "",
             "Models trained at the defaults; AUROC of each rule computed from the same part scores and stored "
             "references. `min_p` is the shipped rule; `min_p_no_defect` leaves the defect part out; `fisher` sums "
             "-ln p over the parts; `top2` sums the two largest.", "",
             "| task | kind | " + " | ".join(RULES) + " |", "|---" * (len(RULES) + 2) + "|"]
    for task, kinds in report["tasks"].items():
        for kind, row in kinds.items():
            best = max(row.values())
            lines.append(f"| {task} | {kind} | " + " | ".join(f"**{row[r]:.3f}**" if row[r] == best else f"{row[r]:.3f}"
                                                           for r in RULES) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

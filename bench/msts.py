"""MSTS benchmark: fidelity against average time steps for uniform T, hand-picked Tv/Tt splits and
the MED scheduler's choices.

Run by hand; writes a Markdown table to ``bench/results/msts.md`` (``--model tiny-qwen2-vl``) or
``bench/results/msts_trained_llava.md`` (``--model trained-llava``) and prints it::

    python bench/msts.py                          # random tiny Qwen2-VL, a few minutes on 2 cores
    python bench/msts.py --model trained-llava    # the trained easy-VQA LLaVA (see below)

Two models:

* ``tiny-qwen2-vl``: :func:`spikemllm_sj.models.tiny.build_tiny_model` with seeded random weights, the
  contrast case (random weights carry no modality structure worth trusting). Calibration: the
  image batches ``tiny_batch(model, 4, seed)`` and video batches ``tiny_video_batch(model, 2,
  seed)`` for seeds ``0..--batches-1``; the table is measured on the same kinds of batches from
  seeds ``1000..``: logit cosine to FP32 and top-1 agreement over real tokens.
* ``trained-llava``: the LLaVA of the real-weights issue (frozen SmolLM2-135M-Instruct, a trained
  CLIP tower and projector, :func:`spikemllm_sj.models.easyvqa_llava.load_easyvqa_llava`). Calibration:
  ``--calibration`` easy-VQA train questions (one per image, seeded); the table adds exact-match
  accuracy of greedy answers on the test split (one seeded question per test image, the fidelity
  benchmark's subset; ``--test-limit`` to shorten). :func:`trained_llava_task` is the hook; it
  raises, naming what is missing, until the trained weights exist.

Rows: uniform T in {2, 3, 4, 7}; Tv/Tt in {3/4, 4/3, 2/3, 3/3} (video at Tv); the scheduler at
budgets 3.0, 3.3 and 3.6, for each budget measure (``tokens``: steps per language-model token,
the paper's view, the vision tower not counted; ``sites``: steps per token encoded at any
spike-driven site, the vision tower's patches included), whole model and per section (vision tower
apart from the decoder layer groups). The scheduler selects by logit cosine on the calibration
batches (``--select accuracy``: by accuracy on other train questions), never on the table's data.
Every model is converted with ``SpikeConfig()`` (W8, KV8, TC-LIF, RTN; ``--method hadamard`` or
``quarot`` for a rotation) and run as its fake-quant twin, bit-identical to spike mode. The
trained-LLaVA run is long on a CPU (the smoke run with 16 calibration and 8 test questions took 8
minutes on 2 cores; each table row adds a generation pass over the test questions).

Targets (issue): at every budget the scheduler's choice is at least as good as the best uniform T
and the best hand-picked split that fit the budget; on the trained model it reaches uniform-T=4
accuracy within 1 point at no more than 3.3 average steps.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from spikemllm_sj.ann2snn.recipe import set_mode  # noqa: E402
from spikemllm_sj.commands.med import tiny_batches  # noqa: E402
from spikemllm_sj.config import SpikeConfig  # noqa: E402
from spikemllm_sj.med import MEDConfig, MEDStudy, analyze, compare  # noqa: E402
from spikemllm_sj.quantization.methods import RTN, Hadamard, QuaRot  # noqa: E402

UNIFORM = (2, 3, 4, 7)
SPLITS = ((3, 4), (4, 3), (2, 3), (3, 3))
BUDGETS = (3.0, 3.3, 3.6)
OVERS = ("tokens", "sites")
CANDIDATES = (2, 3, 4, 5, 6, 7)
METHODS = {"rtn": RTN, "hadamard": Hadamard, "quarot": QuaRot}  # the methods that need no calibration


@dataclass
class Task:
    """A model under study and how the table scores a plan.

    :param score: extra columns of a plan (e.g. test accuracy), or None.
    :param select: the scheduler's fidelity function, or None for the calibration logit cosine.
    :param holdout: whether the study has held-out batches (the table's cosine is measured there).
    """

    name: str
    description: str
    study: MEDStudy
    holdout: bool
    score: Optional[Callable[[dict], dict]] = None
    score_columns: tuple[str, ...] = ()
    select: Optional[Callable[[dict], float]] = None
    out: Path = ROOT / "bench" / "results" / "msts.md"


def random_task(args) -> Task:
    from spikemllm_sj.models.tiny import build_tiny_model

    model = build_tiny_model("tiny-qwen2-vl", seed=args.seed)
    calib = tiny_batches(model, args.batches, args.seed)
    held = tiny_batches(model, args.batches, args.seed + 1000)
    study = analyze(model, calib, spike_config(args), MEDConfig(CANDIDATES, args.groups), holdout=held)
    tokens = ", ".join(f"{m} {n}" for m, n in study.tokens.items())
    description = (
        f"`spikemllm_sj.models.tiny.build_tiny_model('tiny-qwen2-vl', seed={args.seed})` (Qwen2-VL: text model hidden 64, "
        f"2 layers, 4 heads; ViT 2 blocks of width 32, patch 4, merge 2; random weights), converted with "
        f"`{spike_config_text(args)}`. Calibration: {len(calib)} batches (seeds {args.seed}..{args.seed + args.batches - 1}: "
        f"`tiny_batch(model, 4, seed)` and `tiny_video_batch(model, 2, seed)`), language-model tokens {tokens}. "
        f"Table: the same kinds of batches from seeds {args.seed + 1000}.., logit cosine to FP32 and top-1 "
        f"agreement over real tokens. Sensitivity probed at T in {CANDIDATES} (reference {CANDIDATES[-1]}); "
        f"{args.groups} decoder-layer group(s) measured apart from the vision tower."
    )
    return Task("tiny-qwen2-vl", description, study, holdout=True)


def trained_llava_task(args) -> Task:
    """HOOK for the trained tiny LLaVA of the real-weights issue (easy-VQA).

    Needs ``weights/easyvqa_llava_vision.safetensors`` (+ ``.json``) written by
    ``bench/train_easyvqa.py``, the SmolLM2 cache of :mod:`spikemllm_sj.models.real_weights` and the
    ``easy-vqa`` package; raises ``FileNotFoundError`` naming what is missing.
    """
    try:
        from spikemllm_sj.data import easyvqa as ev
        from spikemllm_sj.models.easyvqa_llava import VISION_WEIGHTS, load_easyvqa_llava
    except ImportError as error:
        raise FileNotFoundError(
            f"the trained-LLaVA path needs spikemllm_sj.data.easyvqa and spikemllm_sj.models.easyvqa_llava (real-weights issue): {error}"
        ) from None
    weights = Path(args.weights) if args.weights else VISION_WEIGHTS
    if not weights.is_file() or not weights.with_suffix(".json").is_file():
        raise FileNotFoundError(
            f"the trained easy-VQA LLaVA is not available: {weights} (and its .json) are missing. They come from "
            "the real-weights issue: python bench/train_easyvqa.py; then rerun python bench/msts.py --model trained-llava"
        )
    model, tokenizer, meta = load_easyvqa_llava(weights)
    model.to(args.device)
    train, test = ev.load_split("train"), ev.load_split("test")
    # Calibration and selection questions come from different train images; the table uses the test split.
    pool = ev.one_question_per_image(train, seed=args.seed)
    calib_records = pool[: args.calibration]
    select_records = pool[args.calibration : args.calibration + args.select_size]
    test_records = ev.one_question_per_image(test, seed=0, limit=args.test_limit)

    step = 16
    calib = [ev.prompt_batch(model, tokenizer, train, calib_records[i : i + step]) for i in range(0, len(calib_records), step)]
    fp32 = ev.easyvqa_accuracy(model, tokenizer, test, test_records)
    study = analyze(model, calib, spike_config(args), MEDConfig(CANDIDATES, args.groups))

    def accuracy(plan, data, records) -> float:
        set_mode(study.model, "fake_quant")  # the same numbers as spike mode, faster
        try:
            with study.applied(plan):
                return ev.easyvqa_accuracy(study.model, tokenizer, data, records).percent
        finally:
            set_mode(study.model, "spike")

    recorded = meta.get("fp32_test_accuracy", {}).get("percent")
    description = (
        f"The easy-VQA LLaVA of the real-weights issue ({weights.name}; FP32 accuracy on the test questions below, "
        f"measured here: {fp32.percent:.2f}% ({fp32.correct}/{fp32.total}); recorded at training on its own subset: "
        f"{'not recorded' if recorded is None else f'{recorded:.2f}%'}), converted with `{spike_config_text(args)}`. "
        f"Calibration: {len(calib_records)} train questions (one per image, seed {args.seed}); selection "
        f"({args.select}): {len(select_records)} other train questions; table: exact-match accuracy of greedy "
        f"answers on {len(test_records)} test questions (one per test image, seed 0) and the calibration logit cosine."
    )
    select = None
    if args.select == "accuracy":
        select = lambda plan: accuracy(plan, train, select_records) / 100  # noqa: E731
    return Task(
        "trained-llava",
        description,
        study,
        holdout=False,
        score=lambda plan: {"accuracy": accuracy(plan, test, test_records)},
        score_columns=("accuracy",),
        select=select,
        out=ROOT / "bench" / "results" / "msts_trained_llava.md",
    )


TASKS = {"tiny-qwen2-vl": random_task, "trained-llava": trained_llava_task}


def spike_config(args) -> SpikeConfig:
    return SpikeConfig(method=METHODS[args.method]())


def spike_config_text(args) -> str:
    return "SpikeConfig()" if args.method == "rtn" else f"SpikeConfig(method={METHODS[args.method].__name__}())"


def _plan_text(plan: dict) -> str:
    return "; ".join(("" if s == "all" else f"{s}: ") + ", ".join(f"{m} {t}" for m, t in v.items()) for s, v in plan.items())


def run(task: Task) -> tuple[list[dict], dict]:
    rows, schedules = compare(
        task.study, UNIFORM, SPLITS, BUDGETS, overs=OVERS, holdout=task.holdout, fidelity=task.select
    )
    if task.score is not None:
        for row in rows:
            row.update(task.score(row["plan"]))
    return rows, schedules


def verdicts(rows: list[dict], metric: str, trained: bool) -> list[str]:
    """The issue's targets, checked on the table's rows."""
    out = []
    fixed = [r for r in rows if r["kind"] in ("uniform", "split")]
    for r in rows:
        if r["kind"] not in ("msts", "msts_groups"):
            continue
        key = "average_steps" if r["over"] == "tokens" else "site_steps"
        budget = float(r["label"].split()[1])
        fits = {k: [f for f in fixed if f["kind"] == k and f[key] <= budget + 1e-9] for k in ("uniform", "split")}
        best = {k: max(v, key=lambda f: f[metric]) if v else None for k, v in fits.items()}
        parts = []
        ok = True
        for kind, b in best.items():
            if b is None:
                parts.append(f"no {kind} plan fits")
                continue
            ok &= r[metric] >= b[metric]
            parts.append(f"best {kind} that fits: {b['label']} {b[metric]:.4f}")
        spent = ""
        if r["over"] == "tokens" and r["site_steps"] > budget + 1e-9:
            spent = f" (but {r['site_steps']:.3f} steps per token at any site: the vision tower is not counted)"
        out.append(f"- {r['label']}: {metric} {r[metric]:.4f}; {'; '.join(parts)}: **{'met' if ok else 'not met'}**{spent}")
    if trained:
        t4 = next(r for r in rows if r["label"] == "T=4")[metric]
        close = [r for r in rows if r["kind"].startswith("msts") and r["average_steps"] <= 3.3 + 1e-9 and r[metric] >= t4 - 1]
        out.append(
            f"- uniform T=4 accuracy {t4:.2f}; MSTS plans within 1 point at <= 3.3 steps per language-model token: "
            + (", ".join(f"{r['label']} ({r[metric]:.2f}, {r['average_steps']:.3f} steps)" for r in close) or "none")
            + f": **{'met' if close else 'not met'}**"
        )
    return out


def markdown(task: Task, rows: list[dict], schedules: dict, args, seconds: float) -> str:
    import transformers

    metric = "accuracy" if task.score is not None else "cosine"
    where = "held-out batches" if task.holdout else "calibration batches"
    study = task.study
    head = "| plan | steps | avg steps / LM token | avg steps / site token | logit cosine | top-1 |"
    sep = "|---|---|---|---|---|---|"
    if task.score_columns:
        head += "".join(f" {c} (%) |" for c in task.score_columns)
        sep += "---|" * len(task.score_columns)
    lines = [
        f"# MSTS: fidelity against time steps ({task.name})",
        "",
        f"Command: `{args.command}`; {seconds / 60:.1f} min "
        + (f"on {torch.cuda.get_device_name()}" if str(getattr(args, "device", "cpu")).startswith("cuda") and task.name == "trained-llava"
           else f"with {torch.get_num_threads()} torch thread(s) on {os.cpu_count()} logical CPUs")
        + f"; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}.",
        "",
        task.description,
        "",
        "Mean MED over the decoder layers (1 - cos(layer input, output), text minus visual): "
        + ", ".join(f"{v} {x:+.4f}" for v, x in study.mean_med().items())
        + ". Whole-model sensitivity (mean increase of 1 - logit cosine below the reference): "
        + ", ".join(f"{m} {study.table().sensitivity(m):.2e}" for m in study.modalities)
        + "; by section: "
        + "; ".join(
            f"{s}: " + ", ".join(f"{m} {study.table(True).sensitivity(m, s):.2e}" for m in v)
            for s, v in study.table(True).error.items()
        )
        + ".",
        "",
        f"Logit cosine and top-1 on the {where}. MSTS rows: `MSTS b` budget b per language-model token, "
        "`(sites)` per token at any site; `/groups`: the vision tower and the decoder layer group(s) scheduled apart "
        "(measured with `steps_applied`; a converted model carries one MSTSConfig, so only whole-model plans can be "
        "set with `set_msts` and saved).",
        "",
        head,
        sep,
    ]
    for r in rows:
        line = (
            f"| {r['label']} | {_plan_text(r['plan'])} | {r['average_steps']:.3f} | {r['site_steps']:.3f} | "
            f"{r['cosine']:.4f} | {r['top1']:.3f} |"
        )
        line += "".join(f" {r[c]:.2f} |" for c in task.score_columns)
        lines.append(line)
    lines += ["", f"## Targets ({metric}; a budget is judged in its own measure)", ""]
    lines += verdicts(rows, metric, task.score is not None)
    lines += ["", "## What the scheduler measured (calibration batches)", ""]
    for (over, budget), (whole, grouped) in schedules.items():
        for name, sched in (("whole model", whole), ("per section", grouped)):
            if sched is None:
                continue
            c = sched.chosen
            lines.append(
                f"- {over} {budget:g}, {name}: {_plan_text(c.plan)}, predicted {c.predicted:.4f}, measured "
                f"{c.measured:.4f}; {len(sched.verified)} of {sched.considered} plans kept by the search measured"
            )
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-qwen2-vl", choices=sorted(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=4, help="tiny-qwen2-vl: calibration (and held-out) seeds")
    parser.add_argument("--groups", type=int, default=2, help="decoder layer groups scheduled apart from the vision tower")
    parser.add_argument("--method", default="rtn", choices=sorted(METHODS), help="quantization method of the conversion")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="trained-llava: where the model runs")
    parser.add_argument("--weights", default=None, help="trained-llava: vision tower + projector safetensors")
    parser.add_argument("--calibration", type=int, default=64, help="trained-llava: calibration questions")
    parser.add_argument("--select", default="cosine", choices=("cosine", "accuracy"), help="trained-llava: what the scheduler maximises")
    parser.add_argument("--select-size", type=int, default=256, help="trained-llava: train questions for --select accuracy")
    parser.add_argument("--test-limit", type=int, default=None, help="trained-llava: first N test images only")
    parser.add_argument("--out", type=Path, default=None, help="Markdown output (default: bench/results/msts*.md)")
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "bench/msts.py", *(sys.argv[1:] if argv is None else argv)])
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        task = TASKS[args.model](args)
    except FileNotFoundError as error:
        print(f"bench/msts.py: {error}", file=sys.stderr)
        return 2
    rows, schedules = run(task)
    text = markdown(task, rows, schedules, args, time.perf_counter() - start)
    out = args.out or task.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

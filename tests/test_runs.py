"""Runs and output folders (issue 13, item 5): a folder holds one run or none, a failed or
interrupted run leaves the previous one intact, every argument is checked before any work, and
"spiking != fake-quant" has an exit status of its own."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.recipe import spike_state
from spikemllm_sj.commands import cli, convert, demo, evaluate, lava, med, options
from spikemllm_sj.commands.cli import main
from spikemllm_sj.commands.run_folder import run_folder, write_file

ROOT = Path(__file__).resolve().parents[1]
# The cheapest whole convert run: a tiny model, RTN with dynamic scales and no clipping (no
# calibration), no MED, no scored records, no Lava, one row, one new token.
TINY = ["--model", "tiny-qwen2-vl"]
QUICK = [*TINY, "--method", "RTN", "--act-scales", "dynamic", "--act-clip", "1", "--weight-clip", "none",
         "--med-budget", "none", "--lava-layer", "none", "--new-tokens", "1", "--question", "What colour is the circle?"]


def tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (relative path -> SHA-256 of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[str]:
    """Partial or previous folders and files that a run left beside ``out``."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


# The run folder itself.


def test_a_run_replaces_the_previous_run_as_a_whole(tmp_path):
    out = tmp_path / "run"
    with run_folder(out, "run.json") as partial:
        (partial / "run.json").write_text("first")
        (partial / "stale.txt").write_text("only in the first run")
    assert tree(out).keys() == {"run.json", "stale.txt"}
    with run_folder(out, "run.json") as partial:
        assert partial.parent == out.parent and partial.name.startswith(".run.partial-")
        (partial / "run.json").write_text("second")
    assert tree(out).keys() == {"run.json"} and (out / "run.json").read_text() == "second"
    assert leftovers(out) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_failed_or_interrupted_run_leaves_the_previous_one_and_nothing_else(tmp_path, error):
    out = tmp_path / "run"
    with run_folder(out, "run.json") as partial:
        (partial / "run.json").write_text("previous")
    before = tree(out)
    with pytest.raises(error):
        with run_folder(out, "run.json") as partial:
            (partial / "run.json").write_text("half written")
            raise error
    assert tree(out) == before and leftovers(out) == []


def test_an_interruption_during_the_swap_restores_the_previous_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with run_folder(out, "run.json") as partial:
        (partial / "run.json").write_text("previous")
    before = tree(out)
    calls = []
    real_replace = os.replace

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the previous run is aside, the new one not yet in place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with run_folder(out, "run.json") as partial:
            (partial / "run.json").write_text("new")
    assert calls[0][1].startswith(".run.previous-") and calls[1][1] == "run"
    monkeypatch.undo()
    assert tree(out) == before and leftovers(out) == []


def test_a_folder_of_other_files_or_a_file_is_never_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files but no run.json, so it is not a previous run"):
        with run_folder(tmp_path, "run.json"):
            pass
    with pytest.raises(ValueError, match=r"notes.txt is a file, not a folder"):
        with run_folder(tmp_path / "notes.txt", "run.json"):
            pass
    with pytest.raises(ValueError, match=r"notes.txt is a file, not a folder"):
        with run_folder(tmp_path / "notes.txt" / "run", "run.json"):
            pass
    assert tree(tmp_path) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}


def test_write_file_writes_whole_files(tmp_path, monkeypatch):
    path = write_file(tmp_path / "eval.json", "old")
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        write_file(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


# spikemllm convert into an existing run.


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    """A saved convert run, and the eval.json that ``spikemllm eval --out`` added to it."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["convert", "--out", str(out), *QUICK]) == 0
    write_file(out / "eval.json", json.dumps({"from": "an earlier model"}))
    return out


def test_a_rerun_without_saving_leaves_no_old_model_or_eval_behind(previous_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(previous_run, out)
    assert (out / "spiking_model").is_dir() and (out / "eval.json").is_file()
    assert main(["convert", "--out", str(out), *QUICK, "--no-save", "--json"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["saved_model"] is None
    assert not (out / "spiking_model").exists() and not (out / "eval.json").exists()
    assert "the spiking model in" not in (out / "report.md").read_text()
    assert leftovers(out) == []


# Interrupted runs: Ctrl-C at each stage of the run leaves the previous run as it was and no
# partial folder behind.
STAGES = [
    ("spikemllm_sj.commands.convert", "load_model", []),
    ("spikemllm_sj.commands.convert", "calibrate", [pytest.mark.slow]),
    ("spikemllm_sj.commands.convert", "convert_and_compare", [pytest.mark.slow]),
    ("spikemllm_sj.commands.convert", "op_report", [pytest.mark.slow]),
    ("spikemllm_sj.commands.convert", "record_activity", [pytest.mark.slow]),
    ("spikemllm_sj.commands.convert", "save_spiking", [pytest.mark.slow]),
    ("spikemllm_sj.commands.convert", "render_report", []),  # the last write: the partial run is complete
]


@pytest.mark.parametrize("module,name", [pytest.param(m, n, marks=marks, id=n) for m, n, marks in STAGES])
def test_an_interrupted_run_leaves_the_previous_run_intact(previous_run, module, name, monkeypatch):
    before = tree(previous_run)
    reached = []

    def interrupt(*args, **kwargs):
        reached.append(name)
        raise KeyboardInterrupt

    monkeypatch.setattr(f"{module}.{name}", interrupt)
    # main ends an interrupted command with status 130 (cli.main)
    assert main(["convert", "--out", str(previous_run), *QUICK, "--act-scales", "static"]) == 130
    assert reached == [name]
    assert tree(previous_run) == before and leftovers(previous_run) == []


@pytest.mark.slow
def test_sigint_to_a_running_convert_leaves_the_previous_run_intact(previous_run):
    before = tree(previous_run)
    command = [sys.executable, "-m", "spikemllm_sj.commands.cli", "convert", "--out", str(previous_run), *QUICK,
               "--act-scales", "static"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not leftovers(previous_run) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers(previous_run), "the run never started writing"
    time.sleep(1.0)  # into loading and calibration
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=60)  # a run that ignored Ctrl-C would hang here
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode in (130, -signal.SIGINT), err
    assert "KeyboardInterrupt" in err or process.returncode == 130
    assert tree(previous_run) == before and leftovers(previous_run) == []


# Every argument is checked before any work: one line, status 2.


class Work:
    """Records calls to the functions where each command's work begins."""

    def __init__(self, monkeypatch):
        self.calls = []
        for module, name in [(convert, "load_model"), (convert, "calibrate"), (evaluate, "load_model"),
                             (lava, "load_model"), (lava, "convert_compare_report"), (med, "build_tiny_model"),
                             (demo, "run_demo")]:
            real = getattr(module, name)
            monkeypatch.setattr(module, name, self.recorder(f"{module.__name__.rpartition('.')[2]}.{name}", real))

    def recorder(self, label, real):
        def record(*args, **kwargs):
            self.calls.append(label)
            return real(*args, **kwargs)

        return record


def bad_arguments(tmp_path: Path) -> list:
    """``(argv, what the message names, work allowed first)``."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    others = tmp_path / "others"
    others.mkdir()
    (others / "notes.txt").write_text("mine")
    (tmp_path / "bad.toml").write_text("[accelerator\n")
    missing = str(tmp_path / "missing.jsonl")
    plan = tmp_path / "plan.json"
    plan.write_text('[["vision", {"image": 2}]]')
    return [
        (["convert", "--out", str(a_file)], "argument --out: .*a_file is a file, not a folder", []),
        (["convert", "--out", str(a_file / "run")], "argument --out: .*a_file is a file, not a folder", []),
        (["convert", "--out", str(others)], "argument --out: .*others holds files but no run.json", []),
        (["convert", "--med-budget", "-1"], "argument --med-budget: budget -1 is below the smallest step count 2", []),
        (["convert", "--med-budget", "nan"], "argument --med-budget: budget must be a finite number", []),
        (["convert", "--med-budget", "lots"], "argument --med-budget: must be a number of average steps per token or none", []),
        (["convert", "--calibration-data", missing], "argument --calibration-data: .*missing.jsonl does not exist", []),
        (["convert", "--image", str(tmp_path)], "argument --image: .* is not a file", []),
        (["convert", "--new-tokens", "0"], "argument --new-tokens: must be a positive integer, got '0'", []),
        (["convert", "--question", " "], "argument --question: must be a non-empty question", []),
        (["convert", "--steps-text", "-3"], "argument --steps-text: must be a positive integer", []),
        (["convert", "--steps-text", "5", "--steps-image", "4", "--weight-bits", "1"], "weight_bits must be an int in", []),
        (["convert", "--steps-text", "5", "--med-budget", "3.3"], "--med-budget chooses the steps, so it cannot be given with", []),
        (["convert", "--method", "Bogus"], "argument --method: invalid choice: 'Bogus'", []),
        (["convert", "--method", "SmoothQuant", "--method-option", "beta=1"], r"--method-option \['beta'\]: SmoothQuant takes alpha", []),
        (["convert", "--method-option", "seed"], "argument --method-option: must be KEY=VALUE, got 'seed'", []),
        (["convert", "--act-clip", "1.5"], r"act_clip must be a ratio in \(0, 1\] or 'search', got 1.5", []),
        (["convert", "--act-clip", "lots"], r"argument --act-clip: must be a ratio in \(0, 1\] or 'search', got 'lots'", []),
        (["eval", "--kv-clip", "0"], r"kv_clip must be a ratio in \(0, 1\], got 0.0", []),
        (["med", "--weight-clip", "max"], "argument --weight-clip: invalid choice: 'max'", []),
        (["convert", *TINY, "--out", str(tmp_path / "x"), "--lava-layer", "model.bogus"],
         "unknown layer 'model.bogus'; valid layers include", ["convert.load_model"]),
        (["convert", *TINY, "--out", str(tmp_path / "x"), "--lava-layer", "model.language_model.layers.0.input_layernorm"],
         "input_layernorm is a Qwen2VLRMSNorm, which cannot run on Lava", ["convert.load_model"]),
        (["convert", "--min-cosine", "2"], r"argument --min-cosine: must be a cosine in \[-1, 1\] or none, got '2'", []),
        (["convert", "--eval-data", missing], "argument --eval-data: .*missing.jsonl does not exist", []),
        (["convert", "--prompt", "no field"], "argument --prompt: prompt must hold {question} exactly once", []),
        (["convert", "--plan", missing], "argument --plan: .*missing.jsonl does not exist", []),
        (["convert", "--plan", str(plan)], "--plan gives per-site steps and a MED budget chooses the steps", []),
        (["eval", "--method", "RTN", "--act-clip", "1", "--weight-clip", "none", "--calibration-data", str(ROOT / "data" /
          "eval_sample" / "sample.jsonl")], "given, but this configuration needs no calibration", []),
        (["convert", "--act-scales", "static"], "act_scales='static' is not supported with Hadamard", []),
        (["eval", "--out", str(a_file)], "argument --out: .*a_file is a file, not a folder", []),
        (["eval", "--data", missing], "argument --data: .*does not exist", []),
        (["eval", "--batch-size", "0"], "argument --batch-size: must be a positive integer", []),
        (["eval", "--prompt", "{answer}"], "argument --prompt: prompt must be a template with a {question} field", []),
        (["lava", "--params", str(tmp_path / "nonexistent.toml")], "argument --params: .*nonexistent.toml does not exist", []),
        (["lava", "--params", str(tmp_path / "bad.toml")], "bad.toml|Expected", []),
        (["lava", *TINY, "--layer", "model.bogus"], "unknown layer 'model.bogus'", ["lava.load_model"]),
        (["lava", "--tiny-batch"], "--tiny-batch needs a tiny model", []),
        (["med", "--out", str(a_file)], "argument --out: .*a_file is a file, not a folder", []),
        (["med", "--budgets", "1.5"], "budget 1.5 is below the smallest step count 2", []),
        (["med", "--budgets", "nan"], "argument --budgets: must be a finite number > 0, got 'nan'", []),
        (["med", "--candidates", "0", "3"], "argument --candidates: must be a positive integer", []),
        (["demo", "--out", str(a_file)], "argument --out: .*a_file is a file, not a folder", []),
        (["report", "--run", str(tmp_path / "nothing")], "is not a run folder of `spikemllm convert`", []),
    ]


def test_bad_arguments_are_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default out/run, out/med, out/neurons are checked too
    work = Work(monkeypatch)
    cases = bad_arguments(tmp_path)
    for argv, message, allowed in cases:
        work.calls.clear()
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            status = exit_.code
        err = capsys.readouterr().err
        assert status == options.EXIT_USAGE, (argv, err)
        assert err.count("\n") == 1 and err.startswith(f"spikemllm {argv[0]}: error: "), (argv, err)
        assert re.search(message, err), (argv, err)
        assert work.calls == allowed, (argv, work.calls)
    assert not (tmp_path / "x").exists()  # nothing written
    print(f"{len(cases)} bad arguments: each refused in one line, status 2, before any work")


# Exit statuses.


def test_every_command_documents_its_exit_statuses(capsys):
    for command, inexact in [("convert", True), ("eval", True), ("lava", True), ("demo", True), ("med", False), ("report", False)]:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "exit status: 0 done; 2 a bad argument or input (one line, before any work);" in text, command
        assert ("; 3 " in text) == inexact, command
        assert "1 any other error (with a traceback); 130 interrupted (Ctrl-C)." in text, command


def _perturb_spike_mode(monkeypatch, change):
    """Make the conversion of the commands' compare step give a model whose spike mode is off
    (``change`` of its output) at its last linear site (the last decoder layer's down projection,
    before the float output head): what status 3 is for."""
    from spikemllm_sj.analysis import fidelity

    real = fidelity.convert

    def convert_then_perturb(model, *args, **kwargs):
        model = real(model, *args, **kwargs)
        site = [m for m in model.modules() if isinstance(m, SpikeLinear)][-1]
        site.register_forward_hook(lambda mod, inputs, out: change(out) if mod.mode == "spike" else out)
        return model

    monkeypatch.setattr(fidelity, "convert", convert_then_perturb)


def test_spiking_different_from_fake_quant_is_status_3_and_still_a_complete_run(tmp_path, monkeypatch, capsys):
    _perturb_spike_mode(monkeypatch, lambda out: torch.nextafter(out, out + 1))  # one ulp: the logits differ
    out = tmp_path / "run"
    assert main(["convert", "--out", str(out), *QUICK, "--no-save"]) == options.EXIT_INEXACT
    assert json.loads((out / "run.json").read_text())["fidelity"]["spike_equals_twin"] is False
    assert re.search(r"spiking == fake-quant ANN \(bit for bit\) +False", capsys.readouterr().out)


@pytest.mark.slow
def test_eval_answers_different_from_fake_quant_are_status_3(monkeypatch, capsys):
    # eval compares answers, token for token: a change large enough to move them.
    _perturb_spike_mode(monkeypatch, lambda out: torch.full_like(out, 1e3))
    assert main(["eval", *TINY, "--data", str(ROOT / "data" / "eval_sample" / "sample.jsonl"), "--max-new-tokens", "2"]) == 3
    assert "spiking answers == fake-quant answers, token for token: False" in capsys.readouterr().out


def test_an_unexpected_error_is_not_a_usage_error(tmp_path, monkeypatch):
    # Status 1 is Python's for the uncaught exception (and its traceback); main does not map it to 2 or 3.
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(convert, "convert_and_compare", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["convert", "--out", str(tmp_path / "run"), *QUICK])
    assert not (tmp_path / "run").exists() and leftovers(tmp_path / "run") == []


# Default folders.


def test_each_command_writes_its_own_default_folder():
    parser = cli.build_parser()
    defaults = {name: parser.parse_args([name]).out for name in ("convert", "med", "demo")}
    make_demo = re.search(r"^OUT \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    make_med = re.search(r"spikemllm med .*--out (\S+)", (ROOT / "Makefile").read_text()).group(1)
    folders = [str(p) for p in defaults.values()] + [make_demo, make_med]
    assert len(set(folders)) == len(folders), folders
    assert parser.parse_args(["report"]).run == str(defaults["convert"])  # report reads convert's run


def test_every_spike_config_field_is_an_option_of_the_conversion_commands():
    parser = cli.build_parser()
    argv = ["--steps-text", "5", "--steps-image", "2", "--method", "Hadamard", "--method-option", "seed=3",
            "--method-option", "fallback=true", "--weight-method", "gptq", "--weight-bits", "4", "--weight-clip", "mse",
            "--act-scales", "dynamic", "--act-clip", "search", "--kv-bits", "6", "--kv-clip", "0.9", "--prob-bits", "7",
            "--convert-lm-head"]
    from spikemllm_sj import SpikeConfig
    from spikemllm_sj.neurons import MSTSConfig
    from spikemllm_sj.quantization.methods import Hadamard

    expected = SpikeConfig(
        msts=MSTSConfig(steps={"text": 5, "image": 2, "video": 2}), method=Hadamard(seed=3, fallback=True),
        weight_method="gptq", weight_bits=4, weight_clip="mse", act_scales="dynamic", act_clip="search", kv_bits=6,
        kv_clip=0.9, prob_bits=7, convert_lm_head=True,
    )
    for command in ("convert", "eval", "lava"):
        assert options.spike_config(parser.parse_args([command, *argv])) == expected
    med_args = parser.parse_args(["med", *argv[4:]])  # med chooses the steps itself: no step options
    assert options.spike_config(med_args) == replace(expected, msts=MSTSConfig(steps={"text": 4, "image": 3, "video": 3}))
    with pytest.raises(SystemExit):
        parser.parse_args(["med", "--steps-text", "4"])
    # The same options as a mapping (lmms-eval's model_args), through the same parser.
    mapping = {"steps_text": "5", "steps_image": "2", "method": "Hadamard", "method_option": "seed=3;fallback=true",
               "weight_method": "gptq", "weight_bits": "4", "weight_clip": "mse", "act_scales": "dynamic",
               "act_clip": "search", "kv_bits": "6", "kv_clip": "0.9", "prob_bits": "7", "convert_lm_head": "true"}
    assert options.config_from_mapping(mapping) == expected
    with pytest.raises(ValueError, match="unknown configuration option 'bits'; accepted: act_clip, act_scales"):
        options.config_from_mapping({"bits": "8"})
    with pytest.raises(ValueError, match="argument --weight-bits: must be a positive integer, got 'x'"):
        options.config_from_mapping({"weight_bits": "x"})


def test_the_default_configuration_is_the_best_measured_one_everywhere():
    from spikemllm_sj.config import RECOMMENDED
    from spikemllm_sj.integrations.lmms_eval import SpikeMLLMRequests  # noqa: F401  (imports cleanly)

    parser = cli.build_parser()
    for command in ("convert", "eval", "lava"):
        assert options.spike_config(parser.parse_args([command])) == RECOMMENDED, command
    assert options.spike_config(parser.parse_args(["med"])) == RECOMMENDED
    assert options.config_from_mapping({}) == RECOMMENDED
    assert RECOMMENDED.method.name == "Hadamard" and RECOMMENDED.act_clip == "search" and RECOMMENDED.weight_clip == "mse"
    # --method-option keeps the default method's other parameters.
    args = parser.parse_args(["convert", "--method-option", "seed=2"])
    assert options.spike_config(args).method == replace(RECOMMENDED.method, seed=2)
    help_text = " ".join(parser._subparsers._group_actions[0].choices["convert"].format_help().split())
    assert "82.8% against 85.2% FP32 on the trained easy-VQA LLaVA" in help_text


def test_version(capsys):
    import spikemllm_sj

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"spikemllm-sj {spikemllm_sj.__version__}"


def test_a_conversion_below_the_fidelity_guard_is_status_4_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    # W2 weights: the spiking model equals its twin, and is far from the float model.
    assert main(["convert", "--out", str(out), *QUICK, "--no-save", "--weight-bits", "2"]) == options.EXIT_LOW_FIDELITY
    run = json.loads((out / "run.json").read_text())
    assert run["fidelity"]["spike_equals_twin"] is True
    assert run["fidelity"]["guard"] == {"min_cosine": options.DEFAULT_MIN_COSINE, "passed": False}
    assert run["fidelity"]["logit_cosine"] < options.DEFAULT_MIN_COSINE
    assert "FIDELITY GUARD FAILED" in capsys.readouterr().err
    assert "**FIDELITY GUARD FAILED**" in (out / "report.md").read_text()
    assert main(["convert", "--out", str(out), *QUICK, "--no-save", "--weight-bits", "2", "--min-cosine", "none"]) == 0


def test_a_med_schedule_below_the_fidelity_guard_ends_convert_with_status_4(tmp_path, capsys):
    argv = ["convert", *TINY, "--method", "RTN", "--act-clip", "1", "--weight-clip", "none", "--lava-layer", "none",
            "--new-tokens", "1", "--no-save", "--min-cosine", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == options.EXIT_LOW_FIDELITY
    err = capsys.readouterr().err
    assert "spikemllm convert: FIDELITY GUARD FAILED: MED: the best schedule within the budget of 3.3" in err
    assert not (tmp_path / "run").exists() and leftovers(tmp_path / "run") == []


def test_med_refuses_a_schedule_below_the_fidelity_guard():
    from spikemllm_sj import SpikeConfig
    from spikemllm_sj.med.analysis import LowFidelityError, scheduled_config
    from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch

    model = build_tiny_model("tiny-qwen2-vl")
    batches = [tiny_batch(model, 2, seed=0)]
    config, record, snn = scheduled_config(model, batches, SpikeConfig(), None, 3.3, min_cosine=-1.0)
    assert record["chosen"]["measured_fidelity"] > -1.0
    assert spike_state(snn).config == config  # the copy MED measured, with the steps it chose
    with pytest.raises(LowFidelityError, match=r"MED: the best schedule within the budget of 3.3 steps per token .* below "
                                               r"the fidelity guard's 1"):
        scheduled_config(model, batches, SpikeConfig(), None, 3.3, min_cosine=1.0)


def test_explicit_steps_replace_the_default_med_budget():
    parser = cli.build_parser()
    assert convert.med_budget_of(parser.parse_args(["convert"])) == convert.DEFAULT_MED_BUDGET
    assert convert.med_budget_of(parser.parse_args(["convert", "--steps-text", "5"])) is None
    assert convert.med_budget_of(parser.parse_args(["convert", "--med-budget", "3.6"])) == 3.6
    assert convert.med_budget_of(parser.parse_args(["convert", "--steps-image", "2", "--med-budget", "none"])) is None

"""The whole converted model on Lava (:func:`run_model_on_lava`): a prefill of a padded batch of
2 rows (text and image tokens) and greedy decode steps, on every tiny family, against PyTorch
spike mode bit for bit; the accelerator accounting of its processes against SpikingJelly's
counters; failures before and during the run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import convert_tiny
from leftovers import process_group

from spikemllm_sj import RECOMMENDED, SpikeConfig, calibrate, convert
from spikemllm_sj.analysis import accelerator, emulation
from spikemllm_sj.analysis.op_report import layer_scopes
from spikemllm_sj.ann2snn.sites import MSTSSite
from spikemllm_sj.commands.cli import main
from spikemllm_sj.lava_backend import LavaRunError, _forward_worker, model_mapping, run_model_on_lava
from spikemllm_sj.lava_backend.model_plan import prefill_op_report
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_batch
from spikemllm_sj.neurons import MSTSConfig

pytestmark = pytest.mark.lava

DECODE_STEPS = 2
RTN = ["--method", "RTN", "--act-clip", "1", "--weight-clip", "none"]


def lava_children() -> list[int]:
    """Live child processes of this test process (Lava's, if any are left), but multiprocessing's
    resource tracker, which lives as long as its parent."""
    children = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[1]) == os.getpid() and b"resource_tracker" not in command:
            children.append(int(pid))
    return children


@pytest.fixture(scope="module", params=TINY_MODELS)
def family_run(request):
    tiny = convert_tiny(request.param)
    return tiny, run_model_on_lava(tiny.model, tiny.batch, decode_steps=DECODE_STEPS)


def test_whole_model_equals_pytorch_spike_mode_bit_for_bit(family_run):
    tiny, run = family_run
    assert run.forwards == DECODE_STEPS + 1
    assert run.logits_exact, "logits of some forward differ from PyTorch's"
    assert run.tokens_equal and torch.equal(run.tokens, run.reference.sequences[:, -run.forwards :])
    # Every site of the language model, the vision tower and the projector ran on Lava.
    called = {c.site for c in run.plan.calls}
    assert called == set(run.mapping.sites)
    assert any("vision" in s or "visual" in s for s in called) and any("language_model" in s for s in called)
    assert lava_children() == []


def test_the_kv_cache_persists_across_decode_steps(family_run):
    """Each decode step's attention call keeps the site's cached positions and adds one."""
    _, run = family_run
    for site in {c.site for c in run.plan.calls if c.kind != "linear" and "language_model" in c.site}:
        calls = run.plan.site_calls(site)
        assert [c.forward for c in calls] == list(range(DECODE_STEPS + 1))
        for before, after in zip(calls, calls[1:]):
            assert (after.keep, after.new) == (before.keep + before.new, 1)


def test_emulated_accounting_matches_the_counters(family_run):
    """Synaptic operations per site equal SpikingJelly's SynOpCounter on the same input; the
    processes' cycles lie within one cycle per step of the analytic synops / pe_count; the
    non-spiking work per block equals the op report's FlopCounter."""
    tiny, run = family_run
    params = accelerator.load_params()
    pe = params.accelerator.pe_count
    report = prefill_op_report(tiny.model, tiny.batch)
    prefill = [t for t in run.traces if t.call.forward == 0]
    for site in report.sites:  # a site may be called more than once (a vision tower's images)
        assert sum(t.counts["synops"] for t in prefill if t.call.site == site.name) == site.synops, site.name
    for trace in prefill:
        counts = trace.counts
        assert counts["synops"] / pe <= counts["cycles"] < counts["synops"] / pe + trace.call.steps, trace.call.site
        assert counts["membrane_updates"] > 0 and counts["spikes"] > 0
    blocks = layer_scopes(tiny.model)
    assert blocks and set(blocks) <= run.scope_ops[0].keys()
    for scope in blocks:
        assert run.scope_ops[0][scope] == report.non_spiking_flops[scope] > 0, scope
    forwards = emulation.emulated_costs(run, params.accelerator)
    workload = accelerator.workload_from_report(report)
    comparison = emulation.compare_with_analytic(forwards[0], workload, accelerator.compare(workload, params), params)
    assert len(comparison) == len({t.call.site for t in prefill}) == len(report.sites)
    assert all(row.synops_emulated == row.synops_analytic for row in comparison)
    assert forwards[0].tokens == tiny.batch["input_ids"].numel() and all(f.tokens == 2 for f in forwards[1:])
    assert all(f.latency_s > 0 and f.energy_j > 0 for f in forwards)


@pytest.mark.parametrize("precision, grouping", [("floating_pt", "site"), ("fixed_pt", "site")])
def test_floating_point_and_one_process_pair_per_site(precision, grouping):
    """The recommended configuration (Hadamard rotations, searched clips) too."""
    model = build_tiny_model("tiny-qwen2-vl")
    batch = tiny_batch(model, batch_size=2)
    convert(model, RECOMMENDED, calibration=calibrate(model, [batch], RECOMMENDED, progress=False))
    run = run_model_on_lava(model, batch, decode_steps=1, precision=precision, grouping=grouping)
    assert run.exact
    assert run.processes == 2 * len(run.mapping.sites) + 2


def test_an_unknown_site_type_fails_before_anything_runs(monkeypatch):
    tiny = convert_tiny("tiny-llava")

    class Unknown(MSTSSite):
        kind = "linear"

    tiny.model.get_submodule("model.language_model.layers.1.mlp").add_module("extra", Unknown(SpikeConfig().msts, None))
    monkeypatch.setattr("spikemllm_sj.lava_backend.whole_model.record_generation", pytest.fail)
    with pytest.raises(TypeError, match=r"model\.language_model\.layers\.1\.mlp\.extra is a Unknown"):
        run_model_on_lava(tiny.model, tiny.batch)


def test_an_accumulator_beyond_int32_fails_before_anything_runs(monkeypatch):
    tiny = convert_tiny("tiny-llava", SpikeConfig(msts=MSTSConfig(steps={"text": 15, "image": 15}), weight_bits=16))
    monkeypatch.setattr("spikemllm_sj.lava_backend.whole_model.record_generation", pytest.fail)
    with pytest.raises(ValueError, match=r"model\.vision_tower\.\S+: a window of its spikes can accumulate"):
        model_mapping(tiny.model)
    with pytest.raises(ValueError, match="beyond the int32 accumulator"):
        run_model_on_lava(tiny.model, tiny.batch)


def test_a_float64_model_is_refused_before_anything_runs():
    """Its logits cannot travel as float32 words without rounding."""
    tiny = convert_tiny("tiny-llava")
    with pytest.raises(ValueError, match="got float64 parameters"):
        model_mapping(tiny.model.double())


def test_a_process_error_is_reported_and_stops_the_runtime(monkeypatch):
    """Levels out of their code's range reach the neurons: the neuron process raises (nothing is
    clamped), the run ends with the process's traceback and no process is left."""
    tiny = convert_tiny("tiny-llava")
    product = _forward_worker.ForwardWorker._product

    def corrupted(self, site, levels, ids, other, other_qmax):
        return product(self, site, levels * 1000, ids, other, other_qmax)

    monkeypatch.setattr(_forward_worker.ForwardWorker, "_product", corrupted)  # reaches the forked process
    with pytest.raises(LavaRunError, match="levels outside their code's range"):
        run_model_on_lava(tiny.model, tiny.batch, decode_steps=0)
    assert lava_children() == []


def test_an_error_in_the_models_code_is_reported_and_stops_the_runtime(monkeypatch):
    tiny = convert_tiny("tiny-llava")
    product = _forward_worker.ForwardWorker._product

    def failing(self, site, levels, ids, other, other_qmax):
        if self._next == 5:
            raise RuntimeError("a failure in the decoded stages")
        return product(self, site, levels, ids, other, other_qmax)

    monkeypatch.setattr(_forward_worker.ForwardWorker, "_product", failing)
    with pytest.raises(LavaRunError, match="(?s)the model's code raised in DecodedForward.*a failure in the decoded stages"):
        run_model_on_lava(tiny.model, tiny.batch, decode_steps=0)
    assert lava_children() == []


def test_a_forward_that_leaves_its_plan_is_an_error(monkeypatch):
    """The model's code on Lava makes a call the PyTorch run did not (here: the first one twice)."""
    tiny = convert_tiny("tiny-llava")
    product = _forward_worker.ForwardWorker._product

    def twice(self, site, levels, ids, other, other_qmax):
        if self._next == 0:
            product(self, site, levels, ids, other, other_qmax)
        return product(self, site, levels, ids, other, other_qmax)

    monkeypatch.setattr(_forward_worker.ForwardWorker, "_product", twice)
    with pytest.raises(LavaRunError, match="left its plan at call 1"):
        run_model_on_lava(tiny.model, tiny.batch, decode_steps=0)
    assert lava_children() == []


def test_cli_whole_model(capsys):
    status = main(["lava", "--model", "tiny-llava", "--tiny-batch", "--whole", "--decode-steps", "1", "--json", *RTN])
    out = json.loads(capsys.readouterr().out)
    assert status == 0
    assert out["exact"] and out["logits_exact"] and out["tokens_equal"]
    assert len(out["forwards"]) == 2 and out["forwards"][0]["tokens"] > out["forwards"][1]["tokens"] == 2
    assert all(row["synops_emulated"] == row["synops_analytic"] for row in out["sites"])
    assert set(out["not_mapped_ops"]) >= {"lm_head", "model.language_model.embed_tokens"}


def test_cli_whole_model_text(capsys):
    status = main(["lava", "--model", "tiny-qwen2-vl", "--tiny-batch", "--whole", "--decode-steps", "1", *RTN])
    out = capsys.readouterr().out
    assert status == 0
    assert "logits of every forward equal bit for bit: yes; generated tokens equal: yes" in out
    assert "| model.visual.blocks.0.attn.spike_attention.qk | attention.qk |" in out
    assert "GPU roofline" in out and "Not mapped to spike-driven processes" in out


def test_cli_refuses_whole_options_without_whole(capsys):
    assert main(["lava", "--model", "tiny-llava", "--tiny-batch", "--decode-steps", "2"]) == 2
    assert "--decode-steps and --grouping apply to --whole runs only" in capsys.readouterr().err


def test_killing_the_parent_leaves_no_lava_process():
    """SIGKILL (the out-of-memory killer's signal) of a whole-model run: its Lava processes die too."""
    command = [sys.executable, "-m", "spikemllm_sj.commands.cli", "lava", "--model", "tiny-llava-onevision", "--tiny-batch",
               "--whole", "--decode-steps", "40", *RTN]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(process_group(proc.pid)) < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and len(process_group(proc.pid)) >= 10, "the Lava processes did not start"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while process_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_group(proc.pid) == []
    finally:
        for pid in process_group(proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_convert_with_a_whole_model_lava_row(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["convert", "--model", "tiny-llava", "--out", str(out), "--no-save", "--med-budget", "none", "--new-tokens", "2",
                   "--lava-whole", *RTN])
    assert status == 0
    run = json.loads((out / "run.json").read_text())
    assert run["lava_whole"]["exact"] and run["lava_whole"]["forwards"] == 2
    report = (out / "report.md").read_text()
    assert "## The whole model on Lava" in report and "generated tokens equal: **yes**" in report
    assert "Lava, whole model: exact: True" in capsys.readouterr().out

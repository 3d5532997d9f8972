import json
import re

import pytest
import torch
from PIL import Image

from spikemllm_sj.analysis.activity import layer_group, record_activity
from spikemllm_sj.analysis.op_report import op_report
from spikemllm_sj.ann2snn.recipe import convert
from spikemllm_sj.commands.cli import main
from spikemllm_sj.commands.common import EXAMPLE_IMAGE, QUESTIONS
from spikemllm_sj.commands.convert import run_convert
from spikemllm_sj.commands.report import render_report
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.integrations.serialization import load_spiking
from spikemllm_sj.models.inputs import encode
from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The default job (the recommended configuration, MED at 3.3, Lava on the first decoder MLP) on tiny-qwen2-vl."""
    out = tmp_path_factory.mktemp("run")
    return out, run_convert("tiny-qwen2-vl", out, new_tokens=3, progress=False)


@pytest.mark.slow
def test_pipeline_writes_a_consistent_run(run_dir):
    out, run = run_dir
    assert json.loads((out / "run.json").read_text()) == run
    assert run["fidelity"]["spike_equals_twin"] and run["label"] == "FP32"
    assert run["config"]["method"]["name"] == "Hadamard" and run["config"]["act_clip"] == "search"
    assert run["calibration"]["records"] == 6 and run["evaluation"] is None  # tiny models score nothing by default
    assert run["fidelity"]["guard"]["min_cosine"] == 0.9
    # The MED scheduler's choice (budget 3.3 steps per language-model token) is what ran.
    med = run["med"]
    assert med["budget"] == 3.3 and med["chosen"]["average_steps"] <= 3.3
    assert med["chosen"]["measured_fidelity"] is not None and med["candidates_measured"] >= 1
    assert med["clip_ratios_searched_at"] == {"text": 4, "image": 3, "video": 3}
    assert run["ops"]["steps_per_token"] == {m: float(med["steps"][m]) for m in ("image", "text")}
    assert [g["question"] for g in run["generation"]] == list(QUESTIONS)
    assert all(g["tokens"]["spike"] == g["tokens"]["fake_quant"] and len(g["tokens"]["float"]) == 3 for g in run["generation"])
    assert run["lava"]["layer"] == "model.language_model.layers.0.mlp" and run["lava"]["exact"]
    report = json.loads((out / "op_report.json").read_text())
    assert report["total"]["spikes"] == run["ops"]["spikes"]
    # The probe sees the same spikes as the op report (attention probabilities aside).
    activity = json.loads((out / "activity.json").read_text())
    probed = sum(c["spikes"] for s in activity["sites"] for c in s["modalities"].values())
    assert probed == sum(s["spikes"] for s in report["sites"] if s["kind"] != "attention.pv")
    energy = json.loads((out / "energy.json").read_text())
    assert energy["comparison"]["total"]["ratios"]["throughput_ratio"] > 0


@pytest.mark.slow
def test_report_links_existing_plots_and_rerenders_identically(run_dir):
    out, run = run_dir
    text = (out / "report.md").read_text()
    for heading in ("## Configuration", "## Fidelity", "## Ops and energy", "## One layer on Lava", "## Plots"):
        assert heading in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images == ["inputs/0.png", "inputs/0.png", "firing_rates.png", "raster.png", "steps.png"]  # the rows' image
    for name in images:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"| {run['ops']['spikes']} | {run['ops']['synops']} |" in text
    assert main(["report", "--run", str(out)]) == 0
    assert (out / "report.md").read_text() == text


def test_saved_spiking_model_reloads_with_the_same_outputs(run_dir):
    out, run = run_dir
    model = load_spiking(out / "spiking_model")
    with Image.open(EXAMPLE_IMAGE) as image:
        batch = encode(model, None, [image.convert("RGB")] * 2, list(QUESTIONS))
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)[:, batch["input_ids"].shape[1] :]
    assert generated.tolist() == [g["tokens"]["spike"] for g in run["generation"]]


def test_report_needs_a_run_folder(tmp_path, capsys):
    assert main(["report", "--run", str(tmp_path)]) == 2
    assert "missing run.json" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        render_report(tmp_path)


@pytest.mark.slow
def test_cli_convert_json_without_lava_or_saving(tmp_path, capsys):
    out = tmp_path / "llava"
    code = main(["convert", "--model", "tiny-llava", "--out", str(out), "--method", "RTN", "--act-clip", "1",
                 "--weight-clip", "none", "--lava-layer", "none", "--med-budget", "none", "--no-save", "--new-tokens", "2",
                 "--question", "Is it red?", "--json", "--min-cosine", "none"])
    assert code == 0
    run = json.loads(capsys.readouterr().out)
    assert run["lava"] == {"skipped": "no Lava layer asked for"} and run["saved_model"] is None
    assert run["calibration"] is None and run["config"]["act_scales"] == "dynamic"
    assert [g["question"] for g in run["generation"]] == ["Is it red?"]
    assert (out / "report.md").is_file() and not (out / "spiking_model").exists()
    assert "Not run: no Lava layer asked for." in (out / "report.md").read_text()


def test_cli_convert_bad_models_are_messages(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    assert main(["convert", "--model", "tiny-blip", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tiny-qwen2.5-vl" in err and "Traceback" not in err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["convert", "--model", "llava-hf/llava-1.5-7b-hf", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not available locally" in err and "Traceback" not in err
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    assert main(["convert", "--model", "tiny-qwen2-vl", "--image", str(tmp_path / "bad.png"), "--out", str(tmp_path / "run")]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_probe_counts_per_modality_and_draws_a_raster():
    model = build_tiny_model("tiny-llava-onevision")
    batch = tiny_batch(model, batch_size=2)
    convert(model, SpikeConfig())
    activity = record_activity(model, batch, raster_neurons=5, raster_tokens=20)
    report = op_report(model, **batch)
    for site in activity["sites"]:
        reported = next(s for s in report.sites if s.name == site["name"])
        assert sum(c["spikes"] for c in site["modalities"].values()) == reported.spikes
        assert {m: c["tokens"] for m, c in site["modalities"].items()} == reported.tokens
        for modality, counts in site["modalities"].items():
            assert counts["steps"] == counts["tokens"] * {"image": 3, "text": 4}[modality]
    raster = activity["raster"]
    spikes = torch.tensor(raster["spikes"])
    assert spikes.shape == (4, 20, 5) and set(spikes.unique().tolist()) <= {-1, 0, 1}
    assert raster["row"] == 1 and raster["site"] == "model.language_model.layers.0.self_attn.q_proj"
    assert "image" in raster["modality"] and "text" in raster["modality"]  # the window spans a change of modality
    padded = torch.tensor([s == 3 for s in raster["steps"]])
    assert not spikes[0, padded].any()  # a 3-step token's first (padded) step never fires


@pytest.mark.parametrize(
    "site, group",
    [("model.language_model.layers.3.mlp.up_proj", "language_model.layers.3"),
     ("model.visual.merger.mlp.0", "visual.merger.mlp.0"),
     ("model.multi_modal_projector.linear_1", "multi_modal_projector")],
)
def test_layer_group(site, group):
    assert layer_group(site) == group

import json
import runpy
from pathlib import Path

import pytest

from spikemllm_sj.commands.cli import main
from spikemllm_sj.neurons import SCHEMES

ROOT = Path(__file__).resolve().parents[1]


def test_demo_checks_exactness_and_writes_json(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "tc_lif" in printed and "rate_binary" in printed
    result = json.loads((tmp_path / "neurons.json").read_text())
    rows = {r["scheme"]: r for r in result["rows"]}
    assert set(rows) == set(SCHEMES)
    assert all(r["exact"] and r["linear_exact"] for r in rows.values())
    # 5-bit text and 4-bit image tokens: TC-LIF 4/3 steps, bidirectional 15/7 (clipped too), binary offset code 30/14.
    assert (rows["tc_lif"]["steps_text"], rows["tc_lif"]["steps_image"]) == (4, 3)
    assert (rows["rate_bidirectional"]["steps_text"], rows["rate_bidirectional"]["steps_image"]) == (15, 7)
    assert (rows["rate_bidirectional_clipped"]["steps_text"], rows["rate_bidirectional_clipped"]["steps_image"]) == (15, 7)
    # The mean-threshold code's steps follow each token's largest count: not one count for all.
    assert rows["mean_threshold_bitwise"]["steps_per_token"] != int(rows["mean_threshold_bitwise"]["steps_per_token"])
    assert (rows["rate_binary"]["steps_text"], rows["rate_binary"]["steps_image"]) == (30, 14)
    assert rows["tc_lif"]["synops"] == rows["tc_lif"]["spikes"] * result["info"]["out_features"]
    assert rows["tc_lif"]["synops"] < rows["rate_bidirectional"]["synops"] < rows["rate_binary"]["synops"]


def test_demo_json_output(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["neurons"]["info"]["tokens"] == {"text": 16, "image": 16}
    assert printed["conversion"]["model"] == "tiny-qwen2-vl"


def test_demo_converts_the_default_tiny_model(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--model", "tiny-llava"]) == 0
    summary = json.loads((tmp_path / "conversion.json").read_text())
    assert summary["model"] == "tiny-llava" and summary["spike_equals_twin"]
    assert summary["steps_per_token"] == {"image": 3.0, "text": 4.0}
    assert len(summary["generated_spike"]) == 2 and len(summary["generated_spike"][0]) == 6
    report = json.loads((tmp_path / "op_report.json").read_text())
    assert report["total"]["synops"] == summary["synops"] > 0
    assert (tmp_path / "op_report.txt").read_text().startswith("Op report")


def test_quickstart_example_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "neurons_quickstart.py"), run_name="__main__")
    assert "decoded == quantizer: True" in capsys.readouterr().out


def test_ctrl_c_ends_a_command_with_status_130_and_one_line(monkeypatch, capsys):
    from spikemllm_sj.commands import demo

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run", interrupted)
    try:
        status = main(["demo"])
    except KeyboardInterrupt:  # escaping, it would end the pytest session
        pytest.fail("main let the KeyboardInterrupt through")
    assert status == 130
    captured = capsys.readouterr()
    assert captured.err == "spikemllm: interrupted\n" and captured.out == ""

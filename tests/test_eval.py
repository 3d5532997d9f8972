import json
from pathlib import Path

import pytest

from spikemllm_sj.commands.cli import main
from spikemllm_sj.commands.common import SAMPLE_DATA
from spikemllm_sj.commands.evaluate import evaluate
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.data.records import is_correct, normalize_answer, read_records

SAMPLE_LINES = SAMPLE_DATA.read_text().splitlines()


@pytest.fixture
def broken_jsonl(tmp_path) -> Path:
    """Two good records among malformed lines and unreadable images (line numbers in comments)."""
    (tmp_path / "not_an_image.png").write_text("plain text")
    good = json.loads(SAMPLE_LINES[0])
    good["image"] = str(SAMPLE_DATA.parent / good["image"])
    lines = [
        json.dumps(good),  # 1: good
        "{not json",  # 2
        json.dumps({"image": good["image"], "question": "Q?"}),  # 3: no answer
        "[1, 2]",  # 4: not an object
        json.dumps({**good, "image": "not_an_image.png"}),  # 5: unreadable image
        json.dumps({**good, "image": "missing.png"}),  # 6: no such image
        "",  # 7: blank, not a record
        json.dumps({**good, "answer": ["Red", "crimson"]}),  # 8: good, two accepted answers
        json.dumps({**good, "answer": []}),  # 9: empty answer list
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reader_reports_each_bad_line_and_keeps_the_others(broken_jsonl):
    records, problems = read_records(broken_jsonl)
    assert [r.line for r in records] == [1, 8]
    assert records[1].answers == ("Red", "crimson") and records[0].image.mode == "RGB"
    reasons = {p.line: p.reason for p in problems}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 9]
    assert "not valid JSON" in reasons[2]
    assert "missing field(s): answer" in reasons[3]
    assert "not a JSON object" in reasons[4]
    assert "cannot be read" in reasons[5] and "not_an_image.png" in reasons[5]
    assert "cannot be read" in reasons[6] and "missing.png" in reasons[6]
    assert "non-empty list" in reasons[9]


def test_reader_needs_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such JSONL"):
        read_records(tmp_path / "none.jsonl")


@pytest.mark.parametrize(
    "prediction, answers, correct",
    [("Red.", ("red",), True), ("The circle", ("circle",), True), ("  a  blue   square ", ("Blue square",), True),
     ("red circle", ("red",), False), ("", ("red",), False), ("crimson", ("red", "Crimson"), True)],
)
def test_normalised_exact_match(prediction, answers, correct):
    assert is_correct(prediction, answers) is correct


def test_normalize_answer():
    assert normalize_answer("  The RED, square!  ") == "red square"


def test_sample_evaluation_counts_and_exactness():
    result = evaluate("tiny-qwen2-vl", SAMPLE_DATA, batch_size=len(SAMPLE_LINES), max_new_tokens=3, progress=False)
    assert len(result.records) == len(SAMPLE_LINES) and not result.problems
    for r in result.records:
        assert r.tokens["spike"] == r.tokens["fake_quant"] and r.predictions["spike"] == r.predictions["fake_quant"]
        assert len(r.tokens["float"]) == 3
        assert r.correct == {m: is_correct(r.predictions[m], r.answers) for m in r.correct}
    assert result.spike_equals_twin
    summary = result.as_dict()
    for mode in ("float", "fake_quant", "spike"):
        assert summary["accuracy"][mode] == sum(r.correct[mode] for r in result.records) / len(result.records)
    assert summary["gap_points"] == pytest.approx(100 * (summary["accuracy"]["float"] - summary["accuracy"]["spike"]))
    assert summary["accuracy"]["fake_quant"] == summary["accuracy"]["spike"]
    assert "fake-quant ANN" in result.format_table()


def test_cli_eval_reports_bad_lines_and_evaluates_the_rest(broken_jsonl, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--model", "tiny-llava", "--data", str(broken_jsonl), "--out", str(out), "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert "line 2 left out: not valid JSON" in captured.err and "line 6 left out" in captured.err
    assert "2 records evaluated, 6 lines left out" in captured.out
    saved = json.loads((out / "eval.json").read_text())
    assert saved["records_evaluated"] == 2 and saved["lines_left_out"] == 6 and saved["spike_equals_twin"]
    assert [p["line"] for p in saved["problems"]] == [2, 3, 4, 5, 6, 9]


def test_cli_eval_errors_are_messages(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{broken\n")
    assert main(["eval", "--data", str(empty)]) == 2
    assert "no readable record" in capsys.readouterr().err
    assert main(["eval", "--act-scales", "static", "--max-new-tokens", "1"]) == 2  # the default method rotates
    assert "act_scales='static' is not supported with Hadamard" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny-gpt"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'tiny-gpt'" in err and "tiny-llava-onevision" in err and "Traceback" not in err


def test_static_scales_calibrate_on_given_records():
    result = evaluate(
        "tiny-internvl", SAMPLE_DATA, config=SpikeConfig(act_scales="static"),
        calibration_data=SAMPLE_DATA, batch_size=len(SAMPLE_LINES), max_new_tokens=1, progress=False,
    )
    assert result.config["act_scales"] == "static" and result.spike_equals_twin

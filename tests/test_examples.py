import runpy
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# Each example and the line only its family prints.
EXAMPLES = {
    "qwen2_vl": "Qwen2-VL vision: 1x6x8 patch grid, merged 2x2 -> 12 image tokens",
    "qwen2_5_vl": "blocks [0] attend in 16 px windows, blocks [1] over the whole image",
    "internvl": "InternVL vision: 1 tile(s) of 32x32 px, pixel shuffle x0.5 -> 16 image tokens per tile",
    "llava": "from layer -2 (default: CLS dropped) -> MLP projector -> 16 image tokens",
    "llava_onevision": "the whole image + 4 anyres tiles of 16x16 px",
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_offline_on_its_tiny_config(name, capsys):
    main = runpy.run_path(str(ROOT / "examples" / f"{name}.py"))["main"]
    assert main(["--new-tokens", "3"]) == 0
    printed = capsys.readouterr().out
    assert EXAMPLES[name] in printed
    assert "question: 'What colour is the circle?'" in printed
    assert "spiking == fake-quant ANN, bit for bit (logits and tokens): True" in printed
    assert "FP32 ANN answer:" in printed and "spiking answer:" in printed


def test_example_help_names_the_real_checkpoint(capsys):
    main = runpy.run_path(str(ROOT / "examples" / "qwen2_vl.py"))["main"]
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Qwen/Qwen2-VL-7B-Instruct" in capsys.readouterr().out


def test_example_errors_are_messages(tmp_path):
    main = runpy.run_path(str(ROOT / "examples" / "llava.py"))["main"]
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(SystemExit, match="cannot be read"):
        main(["--image", str(tmp_path / "bad.png")])
    with pytest.raises(SystemExit, match="tiny-llava-onevision"):
        main(["--model", "llava"])


def test_images_are_redrawn_identically(tmp_path):
    runpy.run_path(str(ROOT / "examples" / "assets" / "draw_images.py"))["main"](tmp_path)
    drawn = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert Path("examples/assets/shapes.png") in drawn and Path("data/eval_sample/sample.jsonl") in drawn
    for path in drawn:
        if path.suffix == ".png":
            with Image.open(tmp_path / path) as new, Image.open(ROOT / path) as committed:
                assert new.size == committed.size and new.tobytes() == committed.tobytes()
        else:
            assert (tmp_path / path).read_text() == (ROOT / path).read_text()


@pytest.mark.slow
@pytest.mark.weights
def test_the_llava_example_answers_an_easyvqa_question_on_the_trained_model(capsys):
    from spikemllm_sj.commands.common import inputs_for

    main = runpy.run_path(str(ROOT / "examples" / "llava.py"))["main"]
    assert main(["--model", "easyvqa-llava", "--new-tokens", "3"]) == 0  # the fidelity guard passes too
    printed = capsys.readouterr().out
    image, question = inputs_for("easyvqa-llava").rows[0]
    assert f"question: {question!r}" in printed
    assert "spiking == fake-quant ANN, bit for bit (logits and tokens): True" in printed
    assert "random weights" not in printed

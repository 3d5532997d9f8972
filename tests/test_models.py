import pytest
import torch
from PIL import Image

from spikemllm_sj.analysis.fidelity import convert_and_compare
from spikemllm_sj.models.inputs import decode, encode, generate_tokens, tokenize
from spikemllm_sj.models.loading import ModelLoadError, load_model
from spikemllm_sj.models.tiny import (
    TINY_MODELS,
    build_tiny_model,
    build_tiny_processor,
    tiny_batch,
    tiny_image_batch,
    tiny_pixels,
    tiny_spec,
    visual_token_ids,
)


def red_square(size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, (255, 0, 0))


# Loading.


def test_tiny_names_build_offline_with_their_processor():
    model, processor = load_model("tiny-llava", seed=3)
    assert type(processor).__name__ == "LlavaProcessor" and not model.training
    assert processor.tokenizer.padding_side == "left" and processor.image_token_id == visual_token_ids(model)["image"]
    reference = build_tiny_model("tiny-llava", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


@pytest.mark.parametrize("name", ["tiny-qwen3-vl", "qwen2-vl", ""])
def test_unknown_names_list_the_valid_ones(name):
    with pytest.raises(ValueError) as error:
        load_model(name)
    assert all(tiny in str(error.value) for tiny in TINY_MODELS)


def test_hub_id_offline_says_the_model_must_be_local(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as error:
        load_model("Qwen/Qwen2-VL-7B-Instruct")
    message = str(error.value)
    assert "not available locally" in message and "HF_HUB_OFFLINE" in message
    assert "hf download Qwen/Qwen2-VL-7B-Instruct" in message and "tiny-qwen2-vl" in message
    assert error.value.__cause__ is None  # no chained transformers traceback


def test_folder_without_a_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    """A tiny LLaVA saved with its LlavaProcessor (CLIP image processor, byte-level BPE tokenizer whose
    <image> is the config's placeholder id, a chat template): the hub-checkpoint path."""
    folder = tmp_path_factory.mktemp("llava")
    build_tiny_model("tiny-llava").save_pretrained(folder)
    build_tiny_processor("tiny-llava").save_pretrained(folder)
    return folder


def test_local_checkpoint_loads_with_its_processor_and_converts(llava_folder):
    model, processor = load_model(str(llava_folder))
    assert type(model).__name__ == "LlavaForConditionalGeneration" and processor.tokenizer.padding_side == "left"
    batch = encode(model, processor, [red_square(), red_square((64, 64))], ["what colour is the circle ?", "which shape ?"])
    image_id = visual_token_ids(model)["image"]
    assert ((batch["input_ids"] == image_id).sum(-1) == 16).all()  # (32 / 8)^2 patches, CLS dropped
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].all()  # the shorter row is left-padded
    (run,) = convert_and_compare(model, [batch], new_tokens=3, progress=False)
    assert run.spike_equals_twin()
    assert len(decode(processor, run.spike.tokens)) == 2


# Tiny inputs from real images.


def test_tiny_pixels_resize_and_normalise():
    pixels = tiny_pixels("tiny-qwen2-vl", red_square())
    assert pixels.shape == (3, *tiny_spec("tiny-qwen2-vl").image_hw)
    assert torch.equal(pixels[0], torch.ones_like(pixels[0])) and torch.equal(pixels[1:], -torch.ones_like(pixels[1:]))
    with pytest.raises(TypeError, match="PIL"):
        tiny_pixels("tiny-qwen2-vl", torch.zeros(3, 8, 8))


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_image_batch_matches_the_synthetic_layout(name):
    model = build_tiny_model(name)
    prompts = [tokenize(None, "What colour is it?"), tokenize(None, "Shape?")]
    batch = tiny_image_batch(model, [red_square(), red_square((20, 50))], prompts)
    synthetic = tiny_batch(model, batch_size=1, padding=False)
    assert batch.keys() == synthetic.keys()
    image_id = visual_token_ids(model)["image"]
    # Same placeholder count per image as the synthetic batch (the family's own count).
    assert ((batch["input_ids"] == image_id).sum(-1) == (synthetic["input_ids"] == image_id).sum()).all()
    # Row = [BOS] [start] <image>*n [end] prompt, left-padded.
    for row, prompt in enumerate(prompts):
        assert batch["input_ids"][row, -len(prompt) :].tolist() == prompt
    assert batch["attention_mask"][1].sum() == batch["attention_mask"][0].sum() - (len(prompts[0]) - len(prompts[1]))
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()


def test_tiny_image_batch_rejects_bad_prompts():
    with pytest.raises(ValueError, match="one prompt per image"):
        tiny_image_batch("tiny-llava", [red_square()], [])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_image_batch("tiny-llava", [red_square()], [[5, 900]])


def test_tiny_byte_tokens_round_trip_and_other_ids_show():
    ids = tokenize(None, "Red?")
    assert ids == [b + 3 for b in b"Red?"]
    assert decode(None, torch.tensor([ids + [501, 3]])) == ["Red?<501><3>"]


def test_generate_tokens_checks_its_length():
    model, _ = load_model("tiny-qwen2-vl")
    batch = encode(model, None, [red_square()], ["Hi"])
    assert generate_tokens(model, batch, 3).shape == (1, 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_tokens(model, batch, 0)

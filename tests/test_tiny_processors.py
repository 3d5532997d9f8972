"""The tiny models' processors: the family's own processor class, the byte-level BPE tokenizer
around the config's special ids, and the hub-checkpoint path (save_pretrained -> load_model)."""

import contextlib
import importlib.util

import pytest
import torch
from PIL import Image
from transformers import processing_utils
from transformers.video_processing_utils import VideoProcessorMixin

from spikemllm_sj.models import tiny
from spikemllm_sj.models.inputs import decode, encode, generate_tokens, tokenize
from spikemllm_sj.models.loading import load_model
from spikemllm_sj.models.tiny import (
    TEXT_IDS,
    TINY_MODELS,
    TinyProcessorUnavailable,
    build_tiny_model,
    build_tiny_processor,
    tiny_batch,
    tiny_spec,
    visual_token_ids,
)

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
# Families whose processor class needs no video processor build here whatever is installed.
WITHOUT_VIDEO = ("tiny-llava",)
QUESTIONS = ["What colour is the circle?", "Shape?"]


def builds_here(name) -> bool:
    return HAS_TORCHVISION or name in WITHOUT_VIDEO


@contextlib.contextmanager
def buildable(name):
    """Build ``name``'s processor here. Without torchvision, transformers 5 cannot build the video
    processors the Qwen / InternVL / OneVision processor classes require; the image path never
    uses them, so a bare ``VideoProcessorMixin`` stands in and everything else is the recipe's."""
    if builds_here(name):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(processing_utils.transformers_module, "VideoProcessorMixin", VideoProcessorMixin, raising=False)
        patch.setattr(tiny, "_video_processor", lambda spec, class_name, **kwargs: VideoProcessorMixin())
        yield


def image(hw) -> Image.Image:
    """A 4x-upscaled random image of aspect ratio ``hw`` (PIL takes (width, height))."""
    pixels = torch.randint(0, 256, (4 * hw[0], 4 * hw[1], 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


@pytest.fixture(scope="module", params=TINY_MODELS)
def family(request):
    """(name, model, processor) for each family."""
    name = request.param
    with buildable(name):
        processor = build_tiny_processor(name)
    return name, build_tiny_model(name), processor


def test_processor_class_and_ids_match_the_config(family):
    name, model, processor = family
    spec = tiny_spec(name)
    tokenizer = processor.tokenizer
    assert type(processor).__name__ == spec.processor_class
    assert len(tokenizer) == model.config.get_text_config().vocab_size == 512
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id == spec.pad_token_id and tokenizer.eos_token_id == spec.eos_token_id
    assert tokenizer.bos_token_id == spec.bos_token_id
    for kind, token_id in visual_token_ids(model).items():
        assert getattr(processor, f"{kind}_token_id", token_id) == token_id
        assert tokenizer.convert_ids_to_tokens(token_id) == getattr(processor, f"{kind}_token")
    for delimiter in (spec.image_start, spec.image_end):
        if delimiter is not None:
            assert tokenizer.added_tokens_decoder[delimiter].special
    # Every id is a token, so whatever random weights emit decodes.
    tokens = tokenizer.convert_ids_to_tokens(list(range(512)))
    assert None not in tokens and len(set(tokens)) == 512


def test_text_is_bytes_and_merges_and_round_trips(family):
    _, _, processor = family
    text = "What colour is the circle? Zürich 42"
    ids = tokenize(processor, text)
    assert all(TEXT_IDS[0] <= i < TEXT_IDS[1] for i in ids)
    assert len(ids) < len(text.encode())  # merges: "What", " colour", ... are single tokens
    assert processor.tokenizer.decode(ids) == text
    assert tokenize(processor, "Z") == [ord("Z") + tiny.BYTE_OFFSET]
    assert decode(processor, torch.tensor([list(range(512))]))[0]  # every id, specials skipped


def test_encode_gives_the_synthetic_layout_and_the_model_runs(family):
    name, model, processor = family
    spec = tiny_spec(name)
    batch = encode(model, processor, [image(spec.image_hw), image((spec.image_hw[0], 2 * spec.image_hw[1]))], QUESTIONS)
    synthetic = tiny_batch(model, batch_size=1, padding=False)
    assert set(synthetic) <= set(batch)
    image_id = visual_token_ids(model)["image"]
    # An image of the family's size gets the synthetic batch's placeholder count.
    assert (batch["input_ids"][0] == image_id).sum() == (synthetic["input_ids"] == image_id).sum()
    if name in ("tiny-internvl", "tiny-llava"):  # fixed-size tiles
        assert ((batch["input_ids"] == image_id).sum(-1) == (synthetic["input_ids"] == image_id).sum()).all()
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][1, 0]  # left-padded
    prompt = processor.tokenizer.decode(batch["input_ids"][1], skip_special_tokens=True)
    assert QUESTIONS[1] in prompt and prompt.endswith("ASSISTANT:" if name == "tiny-llava" else "assistant\n")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
    texts = decode(processor, generate_tokens(model, batch, 3))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


@pytest.mark.parametrize("name", [n for n in TINY_MODELS if builds_here(n)])
def test_load_model_returns_the_processor_and_saved_folders_load_back(name, tmp_path):
    model, processor = load_model(name)
    assert type(processor).__name__ == tiny_spec(name).processor_class
    batch = encode(model, processor, [image(tiny_spec(name).image_hw)], QUESTIONS[:1])
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, reloaded = load_model(str(tmp_path))
    assert type(loaded) is type(model) and type(reloaded) is type(processor)
    again = encode(loaded, reloaded, [image(tiny_spec(name).image_hw)], QUESTIONS[:1])
    assert again.keys() == batch.keys() and torch.equal(again["input_ids"], batch["input_ids"])
    assert torch.equal(generate_tokens(loaded, again, 3), generate_tokens(model, batch, 3))


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed: every processor builds")
def test_without_torchvision_the_video_families_say_why_and_load_without_processor():
    for name in TINY_MODELS:
        if name in WITHOUT_VIDEO:
            continue
        with pytest.raises(TinyProcessorUnavailable) as error:
            build_tiny_processor(name)
        message = str(error.value)
        assert name in message and tiny_spec(name).processor_class in message and "torchvision" in message
        assert load_model(name)[1] is None


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError) as error:
        build_tiny_processor("tiny-qwen3-vl")
    assert all(name in str(error.value) for name in TINY_MODELS)

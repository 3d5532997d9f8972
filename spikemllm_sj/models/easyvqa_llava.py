"""A real LLaVA for easy-VQA: frozen SmolLM2-135M-Instruct, a small CLIP vision tower and projector.

A ``transformers`` :class:`~transformers.LlavaForConditionalGeneration` whose language model is the
unchanged SmolLM2 (weights from :mod:`spikemllm_sj.models.real_weights`) and whose vision tower (4 CLIP
layers, width 128, 16x16 patches of the 64x64 image: 16 image tokens, CLS dropped) and two-layer
projector are trained on easy-VQA's train split (``bench/train_easyvqa.py``). Only the vision
tower and projector are stored (``weights/easyvqa_llava_vision.safetensors``, with a JSON of the
config, the training run and the measured test accuracy).

The image placeholder reuses SmolLM2's ``<empty_output>`` special token (never produced in chat) so
that the vocabulary, and with it the language model and its tied output head, stay exactly SmolLM2.
:func:`build_processor` gives the matching :class:`~transformers.LlavaProcessor` (the prompt of
:mod:`spikemllm_sj.data.easyvqa` as its chat template, pixels scaled to [-1, 1]), so the model runs
through the same processor path as a hub checkpoint; ``load_model("easyvqa-llava")`` returns both.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from spikemllm_sj.digests import file_sha256
from spikemllm_sj.models.real_weights import load_smollm2

__all__ = [
    "IMAGE_TOKEN",
    "VISION_WEIGHTS",
    "build_llava",
    "build_processor",
    "image_token_count",
    "load_easyvqa_llava",
    "save_vision",
    "vision_state",
]

IMAGE_TOKEN = "<empty_output>"
VISION = dict(
    hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
    image_size=64, patch_size=16,
)
VISION_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "easyvqa_llava_vision.safetensors"
TRAINED_PARTS = ("model.vision_tower.", "model.multi_modal_projector.")


def image_token_count(vision: dict = VISION) -> int:
    """Image tokens per image: one per patch (the CLS token is dropped)."""
    return (vision["image_size"] // vision["patch_size"]) ** 2


def build_llava(lm, tokenizer, vision: dict = VISION, seed: int = 0):
    """A LLaVA around the language model ``lm`` (a ``LlamaForCausalLM``, shared, not copied).

    The vision tower and projector are freshly initialised from ``seed``; load trained ones with
    :func:`load_easyvqa_llava` or ``model.load_state_dict(state, strict=False)``.
    """
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision, projection_dim=vision["hidden_size"]).to_dict(),
        text_config=lm.config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=image_token_count(vision),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=lm.config.tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
        # Image tokens start no larger than SmolLM2's token embeddings (row norm ~3): the default
        # init gives rows ~10x longer, inputs the frozen LM has never seen, and training then
        # settled on an image-independent soft prompt (measured: 45% after 80 steps).
        out = model.model.multi_modal_projector.linear_2
        emb_std = float(lm.get_input_embeddings().weight.detach().std())
        nn.init.normal_(out.weight, std=emb_std / out.in_features**0.5)
        nn.init.zeros_(out.bias)
    # The language model is SmolLM2 itself: its modules replace the random ones built above.
    model.model.language_model = lm.model
    model.lm_head = lm.lm_head
    model.config.text_config = lm.config
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = lm.config.bos_token_id, lm.config.eos_token_id, lm.config.pad_token_id
    return model.eval()


# easy-VQA's training prompt (spikemllm_sj.data.easyvqa.prompt_ids): the question, then the image's
# placeholder, in a ChatML user turn without a system turn; an assistant turn ends with <|im_end|>.
# (transformers renders with trim_blocks: a newline right after a block tag is written as {{ '\n' }}.)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% if message['role'] == 'user' %}{{ '\\n' }}"
    "{% for part in message['content'] if part['type'] == 'image' %}" + IMAGE_TOKEN + "{% endfor %}{% endif %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_processor(tokenizer, vision: dict = VISION) -> LlavaProcessor:
    """The :class:`~transformers.LlavaProcessor` of the trained model: ``tokenizer`` (SmolLM2's),
    a CLIP image processor resizing to the tower's size and scaling uint8 pixels to [-1, 1] as in
    training (:func:`spikemllm_sj.data.easyvqa.normalize`), and the training prompt as chat template.

    The image placeholder expands to :func:`image_token_count` tokens (CLS dropped: the
    ``"default"`` feature selection with one additional token).
    """
    size = vision["image_size"]
    images = CLIPImageProcessorPil(
        size={"height": size, "width": size}, do_center_crop=False, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=images, tokenizer=tokenizer, patch_size=vision["patch_size"],
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def vision_state(model) -> dict[str, torch.Tensor]:
    """The trained part of ``model``: vision tower and projector parameters."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(TRAINED_PARTS)}


def save_vision(model, path: Path, meta: dict) -> Path:
    """Write the vision tower + projector to ``path`` (safetensors) and ``meta`` plus its SHA-256 to
    ``path.with_suffix('.json')``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(vision_state(model), str(path))
    digest = file_sha256(path)
    path.with_suffix(".json").write_text(json.dumps({**meta, "sha256": digest}, indent=2) + "\n")
    return path


def load_easyvqa_llava(weights: Path = VISION_WEIGHTS, cache: Path | None = None):
    """The trained easy-VQA LLaVA: ``(LlavaForConditionalGeneration in eval mode, tokenizer, meta)``.

    :raises CacheError: the SmolLM2 cache is missing or corrupted.
    :raises FileNotFoundError / ValueError: the vision weights are missing or do not match their JSON.
    """
    weights = Path(weights)
    meta_path = weights.with_suffix(".json")
    if not weights.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"{weights} or {meta_path} is missing; train them with bench/train_easyvqa.py")
    meta = json.loads(meta_path.read_text())
    digest = file_sha256(weights)
    if digest != meta.get("sha256"):
        raise ValueError(f"{weights} has SHA-256 {digest}, its JSON records {meta.get('sha256')}: the file is corrupted")
    lm, tokenizer = load_smollm2(cache)
    model = build_llava(lm, tokenizer, vision=meta["vision"])
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    trained_missing = [k for k in missing if k.startswith(TRAINED_PARTS)]
    if trained_missing or unexpected:
        raise ValueError(f"{weights} does not fit the model: missing {trained_missing}, unexpected {unexpected}")
    return model.eval(), tokenizer, meta


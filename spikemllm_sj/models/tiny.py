"""Tiny, offline, randomly initialised multimodal LLMs with deterministic synthetic batches.

One model per supported family, built from ``transformers`` config classes (no download, no hub
id), small enough that building one and running ``generate()`` for a few tokens takes well under a
second on a CPU:

========================  ==========================================  ==========================
name                      class                                       vision tower / text model
========================  ==========================================  ==========================
``tiny-qwen2-vl``         ``Qwen2VLForConditionalGeneration``         Qwen2-VL ViT / Qwen2-VL
``tiny-qwen2.5-vl``       ``Qwen2_5_VLForConditionalGeneration``      windowed ViT / Qwen2.5-VL
``tiny-internvl``         ``InternVLForConditionalGeneration``        InternViT / Qwen2
``tiny-llava``            ``LlavaForConditionalGeneration``           CLIP / Llama (LLaVA 1.5)
``tiny-llava-onevision``  ``LlavaOnevisionForConditionalGeneration``  SigLIP (anyres) / Qwen2
========================  ==========================================  ==========================

:func:`tiny_batch` gives the forward (and ``generate``) kwargs of a batch in which every row is
``text, image, text``, with as many image placeholder tokens as the family's processor would insert
for the pixels given, and the pixels in the family's own format. :func:`tiny_image_batch` does the
same for real PIL images (resized by :func:`tiny_pixels`) and given prompt ids.
:func:`visual_token_ids` says which token ids are visual placeholders. :func:`build_tiny_processor`
gives each model its family's ``transformers`` processor (image processor at the tiny sizes, a
byte-level BPE tokenizer around the config's special ids, a chat template), built offline.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers import models as tokenizer_models
from transformers import (
    CLIPImageProcessorPil,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    LlavaConfig,
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessorPil,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.image_processing_utils import select_best_resolution

__all__ = [
    "TINY_MODELS",
    "TinyProcessorUnavailable",
    "TinySpec",
    "build_tiny_model",
    "build_tiny_processor",
    "tiny_batch",
    "tiny_image_batch",
    "tiny_pixels",
    "tiny_processor",
    "tiny_spec",
    "tiny_video_batch",
    "visual_token_ids",
]

TINY_MODELS: tuple[str, ...] = (
    "tiny-qwen2-vl",
    "tiny-qwen2.5-vl",
    "tiny-internvl",
    "tiny-llava",
    "tiny-llava-onevision",
)

# Shared sizes. The vocabulary is 512 ids; text tokens are drawn from [3, 500) and the special ids
# (placeholders, BOS/EOS/PAD, vision start/end) live in [0, 3) or [500, 512).
VOCAB = 512
TEXT_IDS = (3, 500)
HIDDEN = 64
INTERMEDIATE = 128
HEADS = 4
LAYERS = 2
VISION_HIDDEN = 32
VISION_HEADS = 2
VISION_LAYERS = 2


@dataclass(frozen=True)
class TinySpec:
    """What one tiny family is: its model and processor classes, the special token ids and the synthetic image size.

    ``image_hw`` is the (height, width) of the synthetic image of each row before the family's
    preprocessing; ``bos_token_id`` is prepended to every row when not None; ``image_start`` /
    ``image_end`` wrap the image placeholders when not None (Qwen ``<|vision_start|>`` /
    ``<|vision_end|>``, InternVL ``<img>`` / ``</img>``).
    """

    name: str
    family: str  # "qwen2_vl", "qwen2_5_vl", "internvl", "llava" or "llava_onevision"
    model_class: str  # class name in ``transformers``
    processor_class: str  # the family's processor class in ``transformers``
    image_hw: tuple[int, int]
    bos_token_id: int | None
    eos_token_id: int
    pad_token_id: int
    image_start: int | None
    image_end: int | None

    def config(self):
        """The ``transformers`` config of this tiny model (random weights come from the seed)."""
        return _CONFIG_BUILDERS[self.family](self)


_SPECS: dict[str, TinySpec] = {
    "tiny-qwen2-vl": TinySpec(
        "tiny-qwen2-vl", "qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", (24, 32),
        bos_token_id=None, eos_token_id=501, pad_token_id=500, image_start=502, image_end=503,
    ),
    "tiny-qwen2.5-vl": TinySpec(
        "tiny-qwen2.5-vl", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", (24, 32),
        bos_token_id=None, eos_token_id=501, pad_token_id=500, image_start=502, image_end=503,
    ),
    "tiny-internvl": TinySpec(
        "tiny-internvl", "internvl", "InternVLForConditionalGeneration", "InternVLProcessor", (32, 32),
        bos_token_id=None, eos_token_id=501, pad_token_id=500, image_start=502, image_end=503,
    ),
    "tiny-llava": TinySpec(
        "tiny-llava", "llava", "LlavaForConditionalGeneration", "LlavaProcessor", (32, 32),
        bos_token_id=1, eos_token_id=2, pad_token_id=501, image_start=None, image_end=None,
    ),
    "tiny-llava-onevision": TinySpec(
        "tiny-llava-onevision", "llava_onevision", "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor", (24, 32),
        bos_token_id=None, eos_token_id=501, pad_token_id=500, image_start=None, image_end=None,
    ),
}
_BY_CLASS = {spec.model_class: spec for spec in _SPECS.values()}


def _unknown(name) -> ValueError:
    return ValueError(f"unknown tiny model {name!r}; valid names: {', '.join(TINY_MODELS)}")


def tiny_spec(model_or_name) -> TinySpec:
    """The :class:`TinySpec` of a tiny name, or of a model (a tiny one, else found by its class).

    For a model, :func:`tiny_batch` reads patch sizes and token ids from the model's config but
    keeps the spec's synthetic image size, which suits the tiny configs.

    :raises ValueError: an unknown name (the message lists the valid ones) or an unsupported model.
    """
    if isinstance(model_or_name, str):
        if model_or_name not in _SPECS:
            raise _unknown(model_or_name)
        return _SPECS[model_or_name]
    name = getattr(getattr(model_or_name, "config", None), "_name_or_path", None)
    if name in _SPECS:
        return _SPECS[name]
    for cls in type(model_or_name).__mro__:
        if cls.__name__ in _BY_CLASS:
            return _BY_CLASS[cls.__name__]
    raise ValueError(
        f"{type(model_or_name).__name__} is not one of the tiny families "
        f"({', '.join(sorted(_BY_CLASS))}); pass a model of one of them or one of: {', '.join(TINY_MODELS)}"
    )


# Configs.


def _text(spec: TinySpec, **extra) -> dict:
    return dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=spec.bos_token_id, eos_token_id=spec.eos_token_id, pad_token_id=spec.pad_token_id,
        **extra,
    )


def _qwen2_vl_config(spec: TinySpec):
    # head_dim 16 -> 8 rotary frequencies, split over (temporal, height, width) by mrope_section.
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    return Qwen2VLConfig(
        text_config=_text(spec, rope_parameters=rope),
        vision_config=dict(
            depth=VISION_LAYERS, embed_dim=VISION_HIDDEN, hidden_size=HIDDEN, num_heads=VISION_HEADS,
            mlp_ratio=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
        ),
        image_token_id=504, video_token_id=505, vision_start_token_id=502, vision_end_token_id=503,
    )


def _qwen2_5_vl_config(spec: TinySpec):
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    return Qwen2_5_VLConfig(
        text_config=_text(spec, rope_parameters=rope),
        vision_config=dict(
            depth=VISION_LAYERS, hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN,
            num_heads=VISION_HEADS, out_hidden_size=HIDDEN, patch_size=4, spatial_merge_size=2,
            temporal_patch_size=2, tokens_per_second=2,
            # 16 px windows = 2x2 merged tokens: block 0 attends within windows, block 1 globally.
            window_size=16, fullatt_block_indexes=[1],
        ),
        image_token_id=504, video_token_id=505, vision_start_token_id=502, vision_end_token_id=503,
    )


def _internvl_config(spec: TinySpec):
    h, w = spec.image_hw
    patch = 4
    tokens = (h // patch) * (w // patch) // 4  # pixel shuffle with downsample_ratio 0.5
    return InternVLConfig(
        text_config=dict(model_type="qwen2", **_text(spec)),
        vision_config=dict(
            hidden_size=VISION_HIDDEN, num_hidden_layers=VISION_LAYERS, num_attention_heads=VISION_HEADS,
            intermediate_size=2 * VISION_HIDDEN, image_size=[h, w], patch_size=[patch, patch],
        ),
        image_token_id=504, image_seq_length=tokens, downsample_ratio=0.5,
    )


def _llava_config(spec: TinySpec):
    h, _ = spec.image_hw
    patch = 8
    return LlavaConfig(
        text_config=dict(model_type="llama", **{**_text(spec), "num_key_value_heads": HEADS}),
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN,
            num_hidden_layers=VISION_LAYERS, num_attention_heads=VISION_HEADS, image_size=h, patch_size=patch,
            projection_dim=VISION_HIDDEN,
        ),
        image_token_index=500, image_seq_length=(h // patch) ** 2,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )


def _llava_onevision_config(spec: TinySpec):
    tile = 16
    return LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", **_text(spec)),
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN,
            num_hidden_layers=VISION_LAYERS, num_attention_heads=VISION_HEADS, image_size=tile, patch_size=4,
            vision_use_head=False,
        ),
        image_token_index=502, video_token_index=503,
        image_grid_pinpoints=[[tile, tile], [tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]],
        vision_aspect_ratio="anyres_max_9", vision_feature_layer=-1, vision_feature_select_strategy="full",
    )


_CONFIG_BUILDERS = {
    "qwen2_vl": _qwen2_vl_config,
    "qwen2_5_vl": _qwen2_5_vl_config,
    "internvl": _internvl_config,
    "llava": _llava_config,
    "llava_onevision": _llava_onevision_config,
}


def build_tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Build the tiny model ``name`` with random weights drawn from ``seed``, in eval mode.

    The same ``(name, seed)`` gives the same parameters on every call; the global RNG state is left
    as it was. Generation never stops early at EOS (random weights), so ``generate`` returns
    ``max_new_tokens`` new tokens for every row.

    :raises ValueError: ``name`` is not in :data:`TINY_MODELS`.
    """
    if not isinstance(name, str):
        raise _unknown(name)
    spec = tiny_spec(name)
    config = spec.config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, spec.model_class)(config)
    model.config._name_or_path = spec.name
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = spec.pad_token_id, spec.bos_token_id, None
    return model.to(dtype).eval()


# Processors: the family's own processor class around a byte-level BPE tokenizer with the config's
# special ids, the family's image processor at the tiny sizes and a chat template.

BYTE_OFFSET = 3  # byte b is token b + 3 (as ByT5); ids [259, 500) are BPE merges of _CORPUS
IM_START = 506  # <|im_start|> of the ChatML families, free in every tiny config
INTERNVL_VIDEO = 505  # InternVL's <video> (its config names no video id)

# What the merges are learnt from: the questions of the examples and the eval sample, and a few everyday sentences.
_CORPUS = """
What colour is the circle? What colour is the shape? What shape is this? What is in the image?
The circle is red. The square is blue. The triangle is green. The shape is yellow. It is a circle.
Which shape is blue? Is there a square in the picture? Describe the image in one word.
red blue green yellow white black orange purple circle square triangle rectangle shape colour color
the a an of in on is are this that there what which where how many one two three yes no answer
user assistant system question image picture video frame left right top bottom small large
Please look at the photo and tell me what you see. I can see a dog, a cat and a tree next to a house.
The man is holding a cup of coffee while he reads the newspaper on the table by the window.
How many people are standing near the car? There are four people and the sky is bright today.
"""


class TinyProcessorUnavailable(ImportError):
    """A tiny family's processor that this installation cannot build (the message says why)."""


def _bpe_merges(count: int) -> list[tuple[str, str]]:
    """``count`` byte-level BPE merges learnt from :data:`_CORPUS`: the most frequent pair first, ties by the pair."""
    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(_CORPUS)
    words = Counter(tuple(piece) for piece, _ in pieces)
    merges = []
    while len(merges) < count:
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            raise AssertionError(f"the corpus gives {len(merges)} merges, {count} are needed")
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        words = Counter({_merge(word, best): n for word, n in words.items()})
    return merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if word[i : i + 2] == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _text_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The text ids [3, 500): the 256 bytes (as ByteLevel characters) then the merges."""
    vocab = {char: BYTE_OFFSET + byte for byte, char in bytes_to_unicode().items()}
    merges = _bpe_merges(TEXT_IDS[1] - len(vocab) - BYTE_OFFSET)
    for a, b in merges:
        vocab[a + b] = len(vocab) + BYTE_OFFSET
    return vocab, merges


def _tokenizer(special: dict[int, str], roles: dict[str, str], named: dict[str, str], bos: str | None):
    """A ``PreTrainedTokenizerFast`` of exactly :data:`VOCAB` ids, left-padding.

    :param special: id -> special token (placeholders, BOS/EOS/PAD, delimiters); every other id
        outside the text ids becomes ``<|reserved_{id}|>``.
    :param roles: ``bos_token`` / ``eos_token`` / ``pad_token`` / ``unk_token`` -> token.
    :param named: the family's named tokens (``image_token``, ...), read by its processor.
    :param bos: prepended to every encoded text when not None (LLaVA's ``<s>``).
    """
    text, merges = _text_vocab()
    reserved = [i for i in range(VOCAB) if not TEXT_IDS[0] <= i < TEXT_IDS[1]]
    specials = {i: special.get(i, f"<|reserved_{i}|>") for i in reserved}
    backend = Tokenizer(tokenizer_models.BPE(vocab={**text, **{t: i for i, t in specials.items()}}, merges=merges))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.values()])
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, next(i for i, t in special.items() if t == bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, padding_side="left", model_max_length=512, extra_special_tokens=named, **roles
    )


def _chat_template(image: str, video: str | None, style: str) -> str:
    """A Jinja chat template: ChatML (``<|im_start|>role ... <|im_end|>``) or LLaVA 1.5's
    ``USER: ... ASSISTANT:``; ``image`` / ``video`` is the text an image / video part becomes."""
    part = "{% if c['type'] == 'image' %}" + image
    if video is not None:
        part += "{% elif c['type'] == 'video' %}" + video
    part += "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    content = "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}" + part
    content += "{% endfor %}{% endif %}"
    if style == "chatml":
        turn, prompt = "<|im_start|>{{ m['role'] }}\n" + content + "<|im_end|>\n", "<|im_start|>assistant\n"
    else:
        turn, prompt = "{{ m['role'].upper() }}: " + content + " ", "ASSISTANT:"
    return "{% for m in messages %}" + turn + "{% endfor %}{% if add_generation_prompt %}" + prompt + "{% endif %}"


_CHATML = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}


def _chatml_special(spec: TinySpec, placeholders: dict[str, int]) -> dict[int, str]:
    """id -> token of a ChatML family: Qwen2's text specials plus the family's ``placeholders`` (token -> id)."""
    chatml = {spec.pad_token_id: "<|endoftext|>", spec.eos_token_id: "<|im_end|>", IM_START: "<|im_start|>"}
    return {**chatml, **{i: token for token, i in placeholders.items()}}


def _video_processor(spec: TinySpec, class_name: str, **kwargs):
    """The family's video processor; :class:`TinyProcessorUnavailable` without torchvision."""
    try:
        return getattr(transformers, class_name)(**kwargs)
    except ImportError:
        raise TinyProcessorUnavailable(
            f"{spec.name}'s processor ({spec.processor_class}) needs a video processor ({class_name}), which "
            f"transformers {transformers.__version__} builds only with torchvision, and torchvision is not installed"
        ) from None


def _qwen_processor(spec: TinySpec, config):
    # Images keep their aspect ratio, resized to at most the synthetic image's area (24 x 32 px ->
    # a 6 x 8 patch grid, 12 merged tokens) and at least 2 x 2 merged tokens.
    v = config.vision_config
    h, w = spec.image_hw
    factor = v.patch_size * v.spatial_merge_size
    sizes = dict(
        patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
        min_pixels=4 * factor**2, max_pixels=h * w,
    )
    image, video = "<|image_pad|>", "<|video_pad|>"
    special = _chatml_special(spec, {
        "<|vision_start|>": config.vision_start_token_id, "<|vision_end|>": config.vision_end_token_id,
        image: config.image_token_id, video: config.video_token_id,
    })
    return dict(
        image_processor=Qwen2VLImageProcessorPil(**sizes),
        tokenizer=_tokenizer(special, _CHATML, {"image_token": image, "video_token": video}, None),
        video_processor=_video_processor(spec, "Qwen2VLVideoProcessor", **sizes),
        chat_template=_chat_template(
            f"<|vision_start|>{image}<|vision_end|>", f"<|vision_start|>{video}<|vision_end|>", "chatml"
        ),
    )


def _internvl_processor(spec: TinySpec, config):
    # One tile per image (max_patches 1, no thumbnail), image_seq_length tokens per tile.
    h, w = spec.image_hw
    start, end, context, video = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
    special = _chatml_special(spec, {
        start: spec.image_start, end: spec.image_end, context: config.image_token_id, video: INTERNVL_VIDEO,
    })
    named = {"start_image_token": start, "end_image_token": end, "context_image_token": context, "video_token": video}
    size = {"height": h, "width": w}
    return dict(
        image_processor=GotOcr2ImageProcessorPil(size=size, crop_to_patches=True, min_patches=1, max_patches=1),
        tokenizer=_tokenizer(special, _CHATML, named, None),
        video_processor=_video_processor(spec, "InternVLVideoProcessor", size=size),
        image_seq_length=config.image_seq_length,
        chat_template=_chat_template(f"{context}\n", f"{video}\n", "chatml"),
    )


def _llava_processor(spec: TinySpec, config):
    # CLIP: shortest edge to the tower's image size, centre crop, one token a patch (CLS dropped
    # by the "default" feature selection).
    side = config.vision_config.image_size
    special = {0: "<unk>", spec.bos_token_id: "<s>", spec.eos_token_id: "</s>", spec.pad_token_id: "<pad>",
               config.image_token_index: "<image>"}
    roles = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return dict(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=_tokenizer(special, roles, {"image_token": "<image>"}, "<s>"),
        patch_size=config.vision_config.patch_size, vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1, image_token="<image>", chat_template=_chat_template("<image>\n", None, "llava"),
    )


def _llava_onevision_processor(spec: TinySpec, config):
    # anyres: the whole image at the tile size plus tiles of the best grid pinpoint.
    v = config.vision_config
    image, video = "<image>", "<video>"
    special = _chatml_special(spec, {image: config.image_token_index, video: config.video_token_index})
    tile = {"height": v.image_size, "width": v.image_size}
    return dict(
        image_processor=LlavaOnevisionImageProcessorPil(size=tile, image_grid_pinpoints=config.image_grid_pinpoints),
        tokenizer=_tokenizer(special, _CHATML, {"image_token": image, "video_token": video}, None),
        video_processor=_video_processor(spec, "LlavaOnevisionVideoProcessor", size=tile),
        num_image_tokens=(v.image_size // v.patch_size) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_aspect_ratio=config.vision_aspect_ratio, image_token=image, video_token=video,
        chat_template=_chat_template(f"{image}\n", f"{video}\n", "chatml"),
    )


# family -> the keyword arguments of its processor class, from (spec, config).
_PROCESSOR_BUILDERS = {
    "qwen2_vl": _qwen_processor,
    "qwen2_5_vl": _qwen_processor,
    "internvl": _internvl_processor,
    "llava": _llava_processor,
    "llava_onevision": _llava_onevision_processor,
}


def build_tiny_processor(name: str):
    """The processor of the tiny model ``name``: the family's ``transformers`` processor class with
    its image processor at the tiny sizes, a byte-level BPE tokenizer of exactly 512 ids whose
    special tokens sit at the config's ids, and a chat template (ChatML; LLaVA 1.5's ``USER: ...
    ASSISTANT:`` for ``tiny-llava``).

    Text ids: byte ``b`` is ``b + 3``, ids [259, 500) are BPE merges of English words; the other
    ids are the config's specials (placeholders, BOS / EOS / PAD, delimiters, ``<|im_start|>`` at
    506) and ``<|reserved_{id}|>``, so every id a random model emits decodes. Pads on the left.
    ``processor(...)`` gives the batch layout of :func:`tiny_batch` (same keys and placeholder
    counts for an image of the family's size) and ``save_pretrained`` / ``AutoProcessor`` round-trip.

    :raises ValueError: ``name`` is not in :data:`TINY_MODELS`.
    :raises TinyProcessorUnavailable: the family's processor needs a video processor and torchvision
        is not installed (every family but LLaVA, in transformers 5).
    """
    if not isinstance(name, str):
        raise _unknown(name)
    spec = tiny_spec(name)
    return getattr(transformers, spec.processor_class)(**_PROCESSOR_BUILDERS[spec.family](spec, spec.config()))


def tiny_processor(name: str):
    """:func:`build_tiny_processor`, or None where this installation cannot build the family's
    processor (:class:`TinyProcessorUnavailable`: no torchvision); the model then takes its inputs
    from :func:`tiny_image_batch`."""
    try:
        return build_tiny_processor(name)
    except TinyProcessorUnavailable:
        return None


# Batches.


def _config_of(model_or_name):
    if isinstance(model_or_name, str):
        return tiny_spec(model_or_name).config(), torch.float32
    return model_or_name.config, getattr(model_or_name, "dtype", torch.float32)


def _row_generator(seed: int, row: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + row * 101 + salt)


def _text_lengths(row: int, padding: bool) -> tuple[int, int]:
    """(text before, text after) the visual tokens; rows grow with their index when padding."""
    return (2 + row, 3 + row) if padding else (2, 3)


def _patchify_qwen(video: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, list[int]]:
    """[T, C, H, W] frames -> ([t*h*w, C*temporal*patch*patch] patches, [t, h, w]) as Qwen2-VL's processors.

    Frames are repeated to a multiple of ``temporal`` (an image is one frame); patches are ordered
    by merge window, as the vision tower's patch merger expects.
    """
    if pad := -video.shape[0] % temporal:
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
    t, c, h, w = video.shape
    gt, gh, gw = t // temporal, h // patch, w // patch
    x = video.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), [gt, gh, gw]


def _onevision_tiles(image: torch.Tensor, pinpoints: list, tile: int) -> torch.Tensor:
    """[C, H, W] -> [1 + n, C, tile, tile]: the resized whole image, then the anyres tiles.

    As LLaVA-OneVision's image processor: resize to the best pinpoint keeping the aspect ratio,
    centre-pad, cut into tiles.
    """
    _, h, w = image.shape
    th, tw = select_best_resolution((h, w), pinpoints)
    if tw / w < th / h:
        nh, nw = min(math.ceil(h * tw / w), th), tw
    else:
        nh, nw = th, min(math.ceil(w * th / h), tw)
    resized = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    px, rx = divmod(tw - nw, 2)
    py, ry = divmod(th - nh, 2)
    padded = F.pad(resized, (px, px + rx, py, py + ry))
    tiles = [padded[:, i : i + tile, j : j + tile] for i in range(0, th, tile) for j in range(0, tw, tile)]
    base = F.interpolate(image[None], size=(tile, tile), mode="bilinear", align_corners=False, antialias=True)[0]
    return torch.stack([base, *tiles])


def _onevision_num_tokens(config, h: int, w: int) -> int:
    """Image placeholder count for one [h, w] image, as ``LlavaOnevisionProcessor`` computes it."""
    tile = config.vision_config.image_size
    side = tile // config.vision_config.patch_size
    th, tw = select_best_resolution((h, w), config.image_grid_pinpoints)
    cur_h, cur_w = side * (th // tile), side * (tw // tile)
    if w / h > cur_w / cur_h:
        cur_h -= ((cur_h - int(round(h * (cur_w / w), 7))) // 2) * 2
    else:
        cur_w -= ((cur_w - int(round(w * (cur_h / h), 7))) // 2) * 2
    unpadded, newlines = cur_h * cur_w, cur_h
    ratio = math.sqrt(cur_h * cur_w / (int(config.vision_aspect_ratio.strip("anyres_max_")) * side**2))
    if ratio > 1.1:
        unpadded, newlines = int(cur_h // ratio) * int(cur_w // ratio), int(cur_h // ratio)
    tokens = unpadded + newlines + side * side
    return tokens - 1 if config.vision_feature_select_strategy == "default" else tokens


def _visual_inputs(spec: TinySpec, config, image: torch.Tensor) -> tuple[int, dict]:
    """(number of placeholder tokens, per-image pixel inputs) for one [3, H, W] image."""
    if spec.family in ("qwen2_vl", "qwen2_5_vl"):
        v = config.vision_config
        patches, grid = _patchify_qwen(image[None], v.patch_size, v.spatial_merge_size, v.temporal_patch_size)
        return math.prod(grid) // v.spatial_merge_size**2, {"pixel_values": patches, "image_grid_thw": grid}
    if spec.family == "internvl":
        # One tile per image (no dynamic crops): image_seq_length context tokens per tile.
        return config.image_seq_length, {"pixel_values": image[None]}
    if spec.family == "llava":
        v = config.vision_config
        tokens = (image.shape[1] // v.patch_size) * (image.shape[2] // v.patch_size)
        tokens += 1  # CLS
        if config.vision_feature_select_strategy == "default":
            tokens -= 1
        return tokens, {"pixel_values": image[None]}
    if spec.family == "llava_onevision":
        tiles = _onevision_tiles(image, config.image_grid_pinpoints, config.vision_config.image_size)
        tokens = _onevision_num_tokens(config, *image.shape[1:])
        return tokens, {"pixel_values": tiles[None], "image_sizes": list(image.shape[1:])}
    raise AssertionError(spec.family)


def _assemble(spec: TinySpec, rows: list[list[tuple[int, int]]], padding: bool) -> dict[str, torch.Tensor]:
    """Left-pad rows of (token id, modality) into input_ids / attention_mask / mm_token_type_ids."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), spec.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    types = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if not padding and len(row) != length:
            raise AssertionError("rows of an unpadded batch must have the same length")
        start = length - len(row)
        ids[i, start:] = torch.tensor([t for t, _ in row])
        types[i, start:] = torch.tensor([m for _, m in row])
        mask[i, start:] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if spec.family in ("qwen2_vl", "qwen2_5_vl"):
        out["mm_token_type_ids"] = types
    return out


def _random_text(gen: torch.Generator, before: int, after: int) -> tuple[list[int], list[int]]:
    text = torch.randint(*TEXT_IDS, (before + after,), generator=gen).tolist()
    return text[:before], text[before:]


def _row_tokens(spec, before: list[int], after: list[int], visual_id, count, modality) -> list[tuple[int, int]]:
    """``[BOS] before [start] <visual>*count [end] after`` as (token id, modality) pairs."""
    row = [(spec.bos_token_id, 0)] if spec.bos_token_id is not None else []
    row += [(t, 0) for t in before]
    row += [(spec.image_start, 0)] if spec.image_start is not None else []
    row += [(visual_id, modality)] * count
    row += [(spec.image_end, 0)] if spec.image_end is not None else []
    row += [(t, 0) for t in after]
    return row


def _image_rows(model_or_name, images: list[torch.Tensor], texts: list[tuple[list[int], list[int]]], padding: bool):
    """The batch of rows ``[BOS] before [start] <image>*n [end] after``, one [3, H, W] image a row."""
    spec = tiny_spec(model_or_name)
    config, dtype = _config_of(model_or_name)
    image_id = visual_token_ids(config)["image"]
    rows, visuals = [], []
    for image, (before, after) in zip(images, texts):
        count, pixels = _visual_inputs(spec, config, image)
        rows.append(_row_tokens(spec, before, after, image_id, count, 1))
        visuals.append(pixels)
    batch = _assemble(spec, rows, padding)
    for key in visuals[0]:
        values = [v[key] for v in visuals]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.cat(values).to(dtype)
        else:
            batch[key] = torch.tensor(values, dtype=torch.long)
    return batch


def _check_batch_args(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def tiny_batch(model_or_name, batch_size: int = 2, seed: int = 0, padding: bool = True) -> dict[str, torch.Tensor]:
    """Forward / ``generate`` kwargs for ``batch_size`` rows of ``text, image, text``, one image a row.

    Each row is ``[BOS] text [start] <image>*n [end] text`` where ``n`` is the number of image
    features the family's vision tower gives for the row's image (what its processor would insert)
    and start/end are the family's image delimiters, if any. Row ``i`` depends only on
    ``(seed, i, padding)``, so ``tiny_batch(m, 1)`` is row 0 of any larger batch without its pads.

    With ``padding=True`` row ``i`` has ``2 + i`` text tokens before the image and ``3 + i`` after,
    and shorter rows are left-padded (pad id, ``attention_mask`` 0) as for generation; with
    ``padding=False`` every row has 2 and 3 and the same length.

    Keys (B rows, L tokens, float pixels in the model's dtype):

    - all: ``input_ids`` [B, L] long, ``attention_mask`` [B, L] long.
    - Qwen2-VL / Qwen2.5-VL: ``pixel_values`` [B*t*h*w, 3*2*p*p] flattened patches (t, h, w the
      patch grid, p the patch size), ``image_grid_thw`` [B, 3] long, ``mm_token_type_ids`` [B, L]
      long (0 text, 1 image).
    - InternVL, LLaVA: ``pixel_values`` [B, 3, H, W].
    - LLaVA-OneVision: ``pixel_values`` [B, 1 + tiles, 3, S, S] (resized whole image, then the
      anyres tiles of side S), ``image_sizes`` [B, 2] long, the original (H, W).
    """
    _check_batch_args(batch_size)
    spec = tiny_spec(model_or_name)
    images, texts = [], []
    for i in range(batch_size):
        gen = _row_generator(seed, i, salt=1)
        images.append(torch.rand((3, *spec.image_hw), generator=gen) * 2 - 1)
        texts.append(_random_text(gen, *_text_lengths(i, padding)))
    return _image_rows(model_or_name, images, texts, padding)


def tiny_pixels(model_or_name, image) -> torch.Tensor:
    """A PIL image as a tiny family's image: ``[3, H, W]`` float in [-1, 1].

    RGB, resized (bicubic) to the family's image size ``tiny_spec(...).image_hw`` and normalised
    with mean 0.5 and std 0.5 per channel (as SigLIP's processor), the range of
    :func:`tiny_batch`'s synthetic images.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    h, w = tiny_spec(model_or_name).image_hw
    rgb = image.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    pixels = torch.tensor(np.asarray(rgb))  # [H, W, 3] uint8
    return (pixels.permute(2, 0, 1).float() / 255 - 0.5) / 0.5


def tiny_image_batch(model_or_name, images: list, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    """Forward / ``generate`` kwargs for real images and prompts: row ``i`` is
    ``[BOS] [start] <image>*n [end] prompts[i]``, left-padded, with ``images[i]`` (a PIL image)
    in the family's pixel format through :func:`tiny_pixels`. Keys as :func:`tiny_batch`.

    :param prompts: token ids per row (e.g. a byte-level tokenizer's), each id in [0, 512).
    """
    if len(images) != len(prompts) or not images:
        raise ValueError(f"need one prompt per image and at least one image, got {len(images)} images, {len(prompts)} prompts")
    config, _ = _config_of(model_or_name)
    vocab = config.get_text_config().vocab_size
    for i, prompt in enumerate(prompts):
        bad = [t for t in prompt if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
    pixels = [tiny_pixels(model_or_name, image) for image in images]
    return _image_rows(model_or_name, pixels, [([], [int(t) for t in p]) for p in prompts], padding=True)


def tiny_video_batch(
    model_or_name, batch_size: int = 2, seed: int = 0, padding: bool = True, num_frames: int = 4
) -> dict[str, torch.Tensor]:
    """Like :func:`tiny_batch` with one video a row instead of an image (Qwen2-VL, Qwen2.5-VL only).

    Each row is ``text <|vision_start|> <video>*n <|vision_end|> text`` for a ``num_frames`` x H x W
    video. Keys: ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` (2 on video tokens), all
    [B, L]; ``pixel_values_videos`` [B*t*h*w, 3*2*p*p] with t = ceil(num_frames / 2);
    ``video_grid_thw`` [B, 3]; Qwen2.5-VL also ``second_per_grid_ts`` [B] (2 frames a patch at 2 fps).
    """
    _check_batch_args(batch_size)
    spec = tiny_spec(model_or_name)
    if spec.family not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"tiny_video_batch supports tiny-qwen2-vl and tiny-qwen2.5-vl, not {spec.name}")
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    config, dtype = _config_of(model_or_name)
    v = config.vision_config
    video_id = visual_token_ids(config)["video"]
    rows, patches, grids = [], [], []
    for i in range(batch_size):
        gen = _row_generator(seed, i, salt=2)
        video = torch.rand((num_frames, 3, *spec.image_hw), generator=gen) * 2 - 1
        p, grid = _patchify_qwen(video, v.patch_size, v.spatial_merge_size, v.temporal_patch_size)
        count = math.prod(grid) // v.spatial_merge_size**2
        rows.append(_row_tokens(spec, *_random_text(gen, *_text_lengths(i, padding)), video_id, count, 2))
        patches.append(p)
        grids.append(grid)
    batch = _assemble(spec, rows, padding)
    batch["pixel_values_videos"] = torch.cat(patches).to(dtype)
    batch["video_grid_thw"] = torch.tensor(grids, dtype=torch.long)
    if spec.family == "qwen2_5_vl":
        fps = 2.0
        batch["second_per_grid_ts"] = torch.full((batch_size,), v.temporal_patch_size / fps)
    return batch


def visual_token_ids(model) -> dict[str, int]:
    """Token ids of the visual placeholders of a model (or its config, or a tiny name).

    Returns ``{"image": id}`` plus ``"video": id`` where the family has a video placeholder, read
    from the config as each family names them (``image_token_id`` / ``image_token_index`` /
    ``video_token_id`` / ``video_token_index``), e.g. ``{"image": 151655, "video": 151656}`` for
    Qwen2-VL.

    :raises ValueError: the config names no image placeholder token.
    """
    if isinstance(model, str):
        config = tiny_spec(model).config()
    else:
        config = getattr(model, "config", model)
    out = {}
    for kind in ("image", "video"):
        for attr in (f"{kind}_token_id", f"{kind}_token_index"):
            value = getattr(config, attr, None)
            if isinstance(value, int):
                out[kind] = value
                break
    if "image" not in out:
        raise ValueError(
            f"{type(config).__name__} has no image_token_id / image_token_index: not a multimodal model"
        )
    return out

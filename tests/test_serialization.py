import json

import pytest
import torch

from spikemllm_sj import SpikeConfig, convert
from spikemllm_sj.ann2snn.serialization import load_spiking, save_spiking
from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch
from spikemllm_sj.neurons import MSTSConfig


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-llava", "tiny-internvl"])
def test_round_trip_gives_identical_logits(tmp_path, name):
    config = SpikeConfig(msts=MSTSConfig(steps={"text": 4, "image": 2, "video": 2}), weight_bits=6)
    model = convert(build_tiny_model(name), config)
    batch = tiny_batch(model, batch_size=2)
    save_spiking(model, tmp_path)
    loaded = load_spiking(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    saved = json.loads((tmp_path / "spike_config.json").read_text())
    assert SpikeConfig.from_dict(saved["spike_config"]).msts.steps_of("image") == 2


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


def test_loading_an_incomplete_folder_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing config.json, spike_config.json, model.safetensors"):
        load_spiking(tmp_path)


def test_round_trip_of_a_rotated_model(tmp_path):
    from spikemllm_sj.quantization.methods import QuaRot

    model = convert(build_tiny_model("tiny-internvl"), SpikeConfig(method=QuaRot()))  # tied embeddings
    batch = tiny_batch(model, batch_size=2)
    save_spiking(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(load_spiking(tmp_path)(**batch).logits, model(**batch).logits)

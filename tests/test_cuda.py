"""The converted model on a CUDA device: spike mode equals the fake-quant twin bit for bit.

Skipped without a GPU (CI has none); run on a lent GPU machine. Conversion runs both ways: on the
CPU then moved, and on the device itself (calibration statistics and rotations follow the weights).
"""

import copy

import pytest
import torch

from spikemllm_sj import SpikeConfig, calibrate, convert, set_mode
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_batch
from spikemllm_sj.quantization.methods import RTN, Hadamard, QuaRot, SmoothQuant

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = {
    "rtn": SpikeConfig(method=RTN()),
    "rtn-static": SpikeConfig(act_scales="static"),
    "smoothquant": SpikeConfig(method=SmoothQuant(0.5)),
    "hadamard": SpikeConfig(method=Hadamard()),
    "quarot": SpikeConfig(method=QuaRot()),
}


@pytest.mark.parametrize("where", ["cpu-then-moved", "on-device"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", TINY_MODELS)
def test_spike_mode_equals_the_twin_on_cuda(name, config, where):
    cfg, device = CONFIGS[config], torch.device("cuda")
    model = build_tiny_model(name)
    batch = tiny_batch(model, batch_size=2, padding=True)
    if where == "on-device":
        model = model.to(device)
    on_device = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    calibration = calibrate(model, [on_device if where == "on-device" else batch], cfg, progress=False) if cfg.needs_calibration else None
    snn = convert(copy.deepcopy(model), cfg, calibration=calibration).to(device)
    outputs = {}
    for mode in ("fake_quant", "spike"):
        set_mode(snn, mode)
        with torch.no_grad():
            outputs[mode] = (snn(**on_device).logits, snn.generate(**on_device, max_new_tokens=3, do_sample=False))
    assert outputs["spike"][0].is_cuda
    assert torch.equal(outputs["spike"][0], outputs["fake_quant"][0])
    assert torch.equal(outputs["spike"][1], outputs["fake_quant"][1])

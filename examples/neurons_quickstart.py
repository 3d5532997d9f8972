"""TC-LIF and MSTS in a few lines: encode, decode, and check against the quantizer.

Run: python examples/neurons_quickstart.py
(The per-MLLM examples come with the converter.)
"""

import torch
from spikingjelly.activation_based import functional

from spikemllm_sj.neurons import IntLevels, MSTSConfig, MSTSEncoder, TCLIFNode, fake_quantize


def main():
    torch.manual_seed(0)
    x = torch.randn(8, 64)
    scale = x.abs().amax() / 7
    node = TCLIFNode(levels=16, scale=scale)  # 16 signed levels -> T = 3 steps
    spikes = node.encode(x)  # [3, 8, 64], values in {-1, 0, 1}
    assert torch.equal(node.decode(spikes), fake_quantize(x, scale, IntLevels(16)))
    print(f"TC-LIF, L=16: {node.steps} steps, spikes {tuple(spikes.shape)}, decoded == quantizer: True")

    # The same neuron driven step by step as any SpikingJelly neuron (current at the first step).
    node.step_mode = "m"
    assert torch.equal(node(torch.cat([x[None], torch.zeros(2, 8, 64)])), spikes)
    functional.reset_net(node)

    # MSTS: ids as transformers' mm_token_type_ids (0 text, 1 image, 2 video).
    encoder = MSTSEncoder(MSTSConfig(steps={"text": 4, "image": 3, "video": 3}))
    h = torch.randn(2, 10, 64)
    ids = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0, 0, 0]] * 2)
    out = encoder(h, ids)
    print(f"MSTS: spikes {tuple(out.spikes.shape)}, steps per token {out.steps[0].tolist()}")
    print(f"      {out.statistics()}")


if __name__ == "__main__":
    main()

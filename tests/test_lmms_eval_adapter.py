"""The lmms-eval adapter against a minimal stand-in for lmms-eval (0.7.3's interface: the ``lmms``
base class, ``Instance`` and ``ModelManifest``), since lmms-eval itself is not installed here."""

import importlib
import sys
import textwrap

import pytest
import torch
from PIL import Image

from spikemllm_sj.ann2snn.recipe import convert
from spikemllm_sj.commands.common import EXAMPLE_IMAGE
from spikemllm_sj.integrations import lmms_eval as adapter
from spikemllm_sj.models.inputs import decode, encode, generate_tokens
from spikemllm_sj.models.loading import load_model

FAKE_LMMS_EVAL = {
    "__init__.py": "",
    "api/__init__.py": "",
    "api/model.py": """
        import abc

        class lmms(abc.ABC):
            is_simple = True

            def __init__(self):
                self._rank, self._world_size, self.task_dict = 0, 1, {}

            @abc.abstractmethod
            def loglikelihood(self, requests): ...

            @abc.abstractmethod
            def generate_until(self, requests): ...

            @abc.abstractmethod
            def generate_until_multi_round(self, requests): ...
    """,
    "api/instance.py": """
        from dataclasses import dataclass, field

        @dataclass
        class Instance:
            request_type: str
            arguments: tuple
            idx: int
            metadata: dict = field(default_factory=dict)

            @property
            def args(self):
                return self.arguments if isinstance(self.arguments, tuple) else (self.arguments,)
    """,
    "models/__init__.py": "",
    "models/registry_v2.py": """
        from dataclasses import dataclass

        @dataclass(frozen=True)
        class ModelManifest:
            model_id: str
            simple_class_path: str = None
            chat_class_path: str = None
            aliases: tuple = ()
    """,
}
QUESTION = "What colour is the circle?"


@pytest.fixture
def lmms_eval(tmp_path, monkeypatch):
    for name, source in FAKE_LMMS_EVAL.items():
        path = tmp_path / "lmms_eval" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("lmms_eval")
    for name in [n for n in sys.modules if n == "lmms_eval" or n.startswith("lmms_eval.")]:
        del sys.modules[name]
    adapter.__dict__.pop("SpikeMLLM", None)


@pytest.fixture(scope="module")
def image():
    with Image.open(EXAMPLE_IMAGE) as opened:
        return opened.convert("RGB")


def instance(kind, *args):
    from lmms_eval.api.instance import Instance

    return Instance(kind, args, 0, {"task": "shapes", "doc_id": 0, "repeats": 1})


def make(cls, image, **kwargs):
    model = cls(model="tiny-llava", **kwargs)
    model.task_dict = {"shapes": {"test": [{"image": image, "answer": "red"}, {"image": image, "two": True}]}}
    return model


def visuals(doc):
    return [doc["image"]] * (2 if doc.get("two") else 1)


def test_module_imports_without_lmms_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmms_eval", None)
    adapter.__dict__.pop("SpikeMLLM", None)
    with pytest.raises(ImportError):
        adapter.SpikeMLLM  # noqa: B018
    assert adapter.SpikeMLLMRequests.is_simple


def test_entry_point_resolves_to_an_lmms_subclass(lmms_eval):
    from lmms_eval.api.model import lmms

    manifest = adapter.model_manifest()
    assert manifest.model_id == "spikemllm" and manifest.chat_class_path is None
    module, name = manifest.simple_class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, lmms) and cls.is_simple and not cls.__abstractmethods__


def test_setup_cfg_declares_the_entry_point():
    from configparser import ConfigParser
    from pathlib import Path

    cfg = ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    assert "spikemllm = spikemllm_sj.integrations.lmms_eval:model_manifest" in cfg["options.entry_points"]["lmms_eval.models"]


def test_generate_until_is_the_spiking_model_and_equals_its_twin(lmms_eval, image):
    spike, twin = (make(adapter.SpikeMLLM, image, mode=mode) for mode in ("spike", "fake_quant"))
    request = instance("generate_until", f"<image>\n{QUESTION}", {"max_new_tokens": 6, "until": []}, visuals, 0, "shapes", "test")
    answer = spike.generate_until([request])
    assert answer == twin.generate_until([request])

    model, _ = load_model("tiny-llava")
    convert(model)
    batch = encode(model, None, [image], [QUESTION])
    assert answer == decode(None, generate_tokens(model, batch, 6))

    stop = answer[0][2:4]
    cut = instance("generate_until", QUESTION, {"max_new_tokens": 6, "until": [stop]}, visuals, 0, "shapes", "test")
    assert spike.generate_until([cut]) == [answer[0].split(stop)[0]]


def test_loglikelihood_aligns_with_greedy_generation(lmms_eval, image):
    spike, twin, ann = (make(adapter.SpikeMLLM, image, mode=mode) for mode in ("spike", "fake_quant", "float"))
    request = instance("loglikelihood", QUESTION, lambda doc: doc["answer"], visuals, 0, "shapes", "test")
    (value, greedy), = spike.loglikelihood([request])
    assert value < 0 and isinstance(greedy, bool)
    assert twin.loglikelihood([request]) == [(value, greedy)]
    assert ann.loglikelihood([request])[0][0] != value

    # The greedy continuation of the float model: flagged greedy, its log-probability the sum of
    # generate()'s step scores.
    batch = encode(ann.model, None, [image], [QUESTION])
    out = ann.model.generate(**batch, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences[:, batch["input_ids"].shape[1] :]
    expected = sum(float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, tokens[0]))
    value, greedy = adapter._continuation_logprob(ann.model, batch, tokens)
    assert greedy and value == pytest.approx(expected, abs=1e-4)


def test_requests_it_cannot_serve_are_refused(lmms_eval, image):
    model = make(adapter.SpikeMLLM, image)
    two = instance("generate_until", QUESTION, {}, visuals, 1, "shapes", "test")
    with pytest.raises(ValueError, match="one image per request"):
        model.generate_until([two])
    sampled = instance("generate_until", QUESTION, {"temperature": 0.7}, visuals, 0, "shapes", "test")
    with pytest.raises(ValueError, match="greedily"):
        model.generate_until([sampled])
    with pytest.raises(NotImplementedError):
        model.generate_until_multi_round([two])
    with pytest.raises(ValueError, match="batch_size"):
        adapter.SpikeMLLM(model="tiny-llava", batch_size=2)
    with pytest.raises(ValueError, match="mode"):
        adapter.SpikeMLLM(model="tiny-llava", mode="ann")

"""lmms-eval adapter: the spiking model (or its fake-quant twin, or the float model) as an
lmms-eval model, so that MLLM benchmarks run on it unchanged.

With ``lmms-eval`` installed beside this package (the ``lmms_eval.models`` entry point in
setup.cfg registers the id ``spikemllm``)::

    python -m lmms_eval --model spikemllm \\
        --model_args model=Qwen/Qwen2-VL-7B-Instruct,mode=spike,steps_text=4,steps_image=3 \\
        --tasks mme --batch_size 1

:class:`SpikeMLLM` is a "simple" lmms-eval model (``is_simple = True``): requests carry the
question text and a ``doc_to_visual`` callable, and each request must have exactly one image.
It subclasses ``lmms_eval.api.model.lmms``, imported only when the class is first looked up, so
this module imports without lmms-eval; :class:`SpikeMLLMRequests` holds everything else.
"""

from __future__ import annotations

from typing import Optional

import torch

from spikemllm_sj.analysis.fidelity import VARIANTS
from spikemllm_sj.ann2snn.recipe import convert, set_mode
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.models.inputs import decode, encode, generate_tokens, tokenize
from spikemllm_sj.models.loading import load_model
from spikemllm_sj.neurons import MSTSConfig

__all__ = ["SpikeMLLMRequests", "SpikeMLLM", "model_manifest", "MODEL_ID"]

MODEL_ID = "spikemllm"
# lmms-eval's LLaVA-style image placeholder, which some task prompts carry; the processor's chat
# template places the image itself.
IMAGE_PLACEHOLDER = "<image>"


class SpikeMLLMRequests:
    """The request handling of :class:`SpikeMLLM`, without the lmms-eval base class.

    :param model: a tiny name, a local folder or a hub id (:func:`~spikemllm_sj.models.loading.load_model`).
    :param mode: ``spike`` (the spiking model), ``fake_quant`` (its quantized ANN twin) or
        ``float`` (the model as loaded, not converted).
    :param steps_text, steps_image: TC-LIF time steps of text and of image / video tokens.
    :param weight_bits: weight bits (dynamic per-token activation scales: no calibration needed).
    :param max_new_tokens: generation length when a request's ``gen_kwargs`` give none.
    :param batch_size: must be 1 (lmms-eval passes it); ``device``: where the model runs (default: CPU).
    """

    is_simple = True

    def __init__(
        self,
        model: str = "tiny-qwen2-vl",
        mode: str = "spike",
        steps_text: int = 4,
        steps_image: int = 3,
        weight_bits: int = 8,
        max_new_tokens: int = 32,
        seed: int = 0,
        batch_size: int = 1,
        device: Optional[str] = None,
    ):
        super().__init__()
        if int(batch_size) != 1:
            raise ValueError(f"{MODEL_ID} runs one request at a time: batch_size must be 1, got {batch_size!r}")
        if mode not in VARIANTS:
            raise ValueError(f"mode must be one of {VARIANTS}, got {mode!r}")
        self.mode = mode
        self.max_new_tokens = int(max_new_tokens)
        self.model, self.processor = load_model(model, seed=int(seed))
        if device is not None:
            self.model.to(device)
        if mode != "float":
            msts = MSTSConfig(steps={"text": int(steps_text), "image": int(steps_image), "video": int(steps_image)})
            with torch.no_grad():
                convert(self.model, SpikeConfig(msts=msts, weight_bits=int(weight_bits)))
            set_mode(self.model, mode)

    def _inputs(self, context: str, doc_to_visual, doc_id, task, split) -> dict:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if len(visuals) != 1:
            raise ValueError(f"{MODEL_ID} answers one image per request; {task}/{split} doc {doc_id} has {len(visuals)}")
        return encode(self.model, self.processor, visuals, [context.replace(IMAGE_PLACEHOLDER, "").strip()])

    def generate_until(self, requests) -> list[str]:
        """Greedy answers; from ``gen_kwargs``, ``max_new_tokens`` and ``until`` (stop strings) are
        honoured, and sampling (``do_sample``, ``temperature`` > 0) is refused."""
        answers = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0) or 0) > 0:
                raise ValueError(f"{MODEL_ID} decodes greedily; {task} asks for sampling: {gen_kwargs}")
            until = gen_kwargs.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            batch = self._inputs(context, doc_to_visual, doc_id, task, split)
            text = decode(self.processor, generate_tokens(self.model, batch, int(gen_kwargs.get("max_new_tokens", self.max_new_tokens))))[0]
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            answers.append(text)
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """``(log p(continuation | image, context), whether greedy decoding gives the continuation)``.

        The continuation's tokens follow the prompt's generation prefix (the chat template's
        assistant turn opening), as the model would generate them.
        """
        results = []
        for request in requests:
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            target = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self.task_dict[task][split][doc_id])
            batch = self._inputs(context, doc_to_visual, doc_id, task, split)
            continuation = torch.tensor([tokenize(self.processor, target)], dtype=torch.long)
            if continuation.shape[1] == 0:
                raise ValueError(f"empty continuation for {task}/{split} doc {doc_id}")
            results.append(_continuation_logprob(self.model, batch, continuation))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{MODEL_ID} does not support multi-round generation")


def _continuation_logprob(model, batch: dict, continuation: torch.Tensor) -> tuple[float, bool]:
    """Sum of the log-probabilities of ``continuation`` ``[1, C]`` appended to the one-row
    ``batch``, and whether each of its tokens is the argmax."""
    prompt = batch["input_ids"].shape[1]
    full = dict(batch)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if key in batch:
            extra = continuation if key == "input_ids" else torch.full_like(continuation, 1 if key == "attention_mask" else 0)
            full[key] = torch.cat([batch[key], extra.to(batch[key].device)], dim=1)
    with torch.no_grad():
        logits = model(**full).logits[0, prompt - 1 : -1].float()  # [C, V]: the predictions of the continuation
    logprobs = torch.log_softmax(logits, dim=-1)
    target = continuation[0].to(logits.device)
    total = float(logprobs.gather(-1, target[:, None]).sum())
    return total, bool((logits.argmax(-1) == target).all())


def _lmms_class():
    from lmms_eval.api.model import lmms

    return type("SpikeMLLM", (SpikeMLLMRequests, lmms), {"__module__": __name__, "__doc__": SpikeMLLMRequests.__doc__})


def __getattr__(name: str):
    # PEP 562: SpikeMLLM is built (lmms-eval imported) on first lookup, as lmms-eval's registry does.
    if name == "SpikeMLLM":
        cls = _lmms_class()
        globals()["SpikeMLLM"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_manifest():
    """The ``lmms_eval.models`` entry point: registers :class:`SpikeMLLM` as ``spikemllm``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.SpikeMLLM")

"""lmms-eval adapter: the spiking model (or its fake-quant twin, or the float model) as an
lmms-eval model, so that MLLM benchmarks run on it unchanged.

With ``lmms-eval`` installed beside this package (``make setup`` installs it; the
``lmms_eval.models`` entry point in setup.cfg registers the id ``spikemllm``)::

    python -m lmms_eval --model spikemllm \\
        --model_args model=easyvqa-llava,mode=spike,steps_text=4,steps_image=3 \\
        --tasks easyvqa --include_path data/lmms_tasks/easyvqa --batch_size 4 --limit 8

``--model_args`` takes the model (a built-in name, a local folder or a hub id), ``mode``, every
``SpikeConfig`` field under its command-line name with underscores (``method``, ``method_option``
as ``k=v;k=v``, ``weight_bits``, ``act_clip``, ``steps_image``, ...: read by the same parser as
``spikemllm convert``, with the same defaults), ``calibration_data`` (a JSONL of
``{image, question, answer}`` records to calibrate on; default :func:`default_calibration_data`),
``dtype``, ``max_new_tokens`` and ``seed``; ``--batch_size N`` and ``--max_batch_size`` pass through.

:class:`SpikeMLLM` is a "simple" lmms-eval model (``is_simple = True``): requests carry the
question text and a ``doc_to_visual`` callable, and each request must have exactly one image.
It subclasses ``lmms_eval.api.model.lmms``, imported only when the class is first looked up, so
this module imports without lmms-eval; :class:`SpikeMLLMRequests` holds everything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from loguru import logger

from spikemllm_sj.analysis.fidelity import VARIANTS
from spikemllm_sj.ann2snn.recipe import convert, set_mode
from spikemllm_sj.commands.common import calibration_for, chunks, inputs_for
from spikemllm_sj.commands.options import config_from_mapping
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.models.inputs import decode, encode, tokenize
from spikemllm_sj.models.loading import EASYVQA_LLAVA, load_model

__all__ = ["SpikeMLLMRequests", "SpikeMLLM", "model_manifest", "MODEL_ID", "default_calibration_data"]  # noqa: F822 (PEP 562)

MODEL_ID = "spikemllm"
# lmms-eval's LLaVA-style image placeholder, which some task prompts carry; the processor's chat
# template places the image itself.
IMAGE_PLACEHOLDER = "<image>"
DTYPES = ("float32", "bfloat16")
# What a request's gen_kwargs may hold; anything else is refused rather than ignored.
GENERATION_KWARGS = ("max_new_tokens", "until", "do_sample", "temperature", "top_p", "top_k", "num_beams")
CALIBRATION_BATCH = 4  # calibration records per forward (fixed: the conversion never depends on --batch_size)
ADAPTER_ARGS = ("model", "mode", "calibration_data", "dtype", "max_new_tokens", "seed", "batch_size", "max_batch_size", "device")


def default_calibration_data(model: str) -> Path:
    """The records a configuration that needs a calibration calibrates on when no
    ``calibration_data`` is given, as for ``spikemllm convert``
    (:func:`~spikemllm_sj.commands.common.inputs_for`): 32 easy-VQA train questions for
    ``easyvqa-llava``, the repository's ``data/eval_sample/sample.jsonl`` for any other model."""
    return inputs_for(model).calibration


def _positive_int(name: str, value, accepted: str = "a positive integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not accepted: {name} must be {accepted}")
    return value


def _batch_size(batch_size, max_batch_size) -> int:
    if isinstance(batch_size, str) and batch_size.isdigit():
        batch_size = int(batch_size)
    if isinstance(batch_size, str) and batch_size.startswith("auto"):
        raise ValueError(
            f"batch_size={batch_size!r} is not accepted: {MODEL_ID} does not probe memory for a batch size; "
            "give a positive integer (e.g. --batch_size 8)"
        )
    size = _positive_int("batch_size", batch_size, "a positive integer ('auto' is not supported)")
    if max_batch_size is not None:
        limit = _positive_int("max_batch_size", max_batch_size, "a positive integer or None")
        if size > limit:
            raise ValueError(f"batch_size={size} is not accepted: it exceeds max_batch_size={limit}")
    return size


class SpikeMLLMRequests:
    """The request handling of :class:`SpikeMLLM`, without the lmms-eval base class.

    :param model: a built-in name, a local folder or a hub id (:func:`~spikemllm_sj.models.loading.load_model`;
        default ``easyvqa-llava``, as for the ``spikemllm`` commands).
    :param mode: ``spike`` (the spiking model), ``fake_quant`` (its quantized ANN twin) or
        ``float`` (the model as loaded, not converted).
    :param calibration_data: a JSONL of records to calibrate on, for configurations that need a
        calibration (the default one does); default :func:`default_calibration_data`.
    :param dtype: ``float32`` or ``bfloat16`` weights.
    :param max_new_tokens: generation length when a request's ``gen_kwargs`` give none.
    :param seed: the random weights of tiny models.
    :param batch_size: requests per ``generate`` call (requests with the same ``gen_kwargs``);
        ``max_batch_size``: an upper bound it is checked against; ``device``: where the model runs.
    :param options: the conversion options (e.g. ``method=QuaRot``, ``act_clip=0.9``, ``steps_image=2``):
        :func:`~spikemllm_sj.commands.options.config_from_mapping`, the ``SpikeConfig`` that
        ``spikemllm convert`` gives the same options; none: its defaults (``RECOMMENDED``).
    """

    is_simple = True

    def __init__(
        self,
        model: str = EASYVQA_LLAVA,
        mode: str = "spike",
        calibration_data: Optional[str] = None,
        dtype: str = "float32",
        max_new_tokens: int = 32,
        seed: int = 0,
        batch_size=1,
        max_batch_size=None,
        device: Optional[str] = None,
        **options,
    ):
        super().__init__()
        if mode not in VARIANTS:
            raise ValueError(f"mode={mode!r} is not accepted: mode must be one of {', '.join(VARIANTS)}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not accepted: dtype must be one of {', '.join(DTYPES)}")
        self.batch_size = _batch_size(batch_size, max_batch_size)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r} is not accepted: seed must be an integer")
        if mode == "float" and options:
            raise ValueError(f"{', '.join(sorted(options))} given with mode='float': the float model is not converted")
        self.mode = mode
        self.config = None if mode == "float" else _spike_config(options)
        self.calibration_data = None
        if self.config is not None and self.config.needs_calibration:
            self.calibration_data = Path(calibration_data) if calibration_data is not None else default_calibration_data(model)
            if not self.calibration_data.is_file():
                raise ValueError(f"calibration_data={str(self.calibration_data)!r} is not accepted: not a JSONL file")
        elif calibration_data is not None:
            raise ValueError(f"calibration_data={calibration_data!r} given, but this configuration needs no calibration")
        self.model, self.processor = load_model(model, seed=seed, dtype=getattr(torch, dtype))
        if device is not None:
            self.model.to(device)
        if self.config is not None:
            if self.calibration_data is not None:
                logger.info(f"{MODEL_ID}: calibrating {model} on {self.calibration_data}")
            calibration, _ = calibration_for(self.model, self.processor, self.config, self.calibration_data,
                                             CALIBRATION_BATCH, progress=False)
            with torch.no_grad():
                convert(self.model, self.config, calibration=calibration)
            set_mode(self.model, mode)

    def _visual(self, request) -> object:
        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if len(visuals) != 1:
            raise ValueError(f"{MODEL_ID} answers one image per request; {task}/{split} doc {doc_id} has {len(visuals)}")
        return visuals[0]

    def _inputs(self, requests) -> dict:
        prompts = [r.args[0].replace(IMAGE_PLACEHOLDER, "").strip() for r in requests]
        return encode(self.model, self.processor, [self._visual(r) for r in requests], prompts)

    def _generation(self, gen_kwargs: dict, where: str) -> tuple[dict, list[str]]:
        """``generate`` kwargs and the stop strings of one request's ``gen_kwargs``."""
        unknown = sorted(set(gen_kwargs) - set(GENERATION_KWARGS))
        if unknown:
            raise ValueError(f"{where}: gen_kwargs {unknown} are not accepted; accepted: {', '.join(GENERATION_KWARGS)}")
        temperature = gen_kwargs.get("temperature", 0.0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"{where}: temperature={temperature!r} is not accepted: a number >= 0 (0: greedy)")
        do_sample = gen_kwargs.get("do_sample")
        if do_sample is None:
            do_sample = temperature > 0
        if not isinstance(do_sample, bool) or (do_sample and temperature == 0 and "temperature" in gen_kwargs) or (
            not do_sample and temperature > 0
        ):
            raise ValueError(f"{where}: do_sample={do_sample!r} with temperature={temperature!r} is not accepted: "
                             "sampling is do_sample=True with temperature > 0, greedy decoding temperature=0")
        kwargs = {
            "max_new_tokens": _positive_int("max_new_tokens", gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
            "do_sample": do_sample,
            "num_beams": _positive_int("num_beams", gen_kwargs.get("num_beams", 1)),
        }
        if do_sample:
            kwargs["temperature"] = float(temperature) if temperature > 0 else 1.0
            for name in ("top_p", "top_k"):
                if gen_kwargs.get(name) is not None:
                    kwargs[name] = gen_kwargs[name]
        until = gen_kwargs.get("until", [])
        until = [until] if isinstance(until, str) else list(until or [])
        return kwargs, [stop for stop in until if stop]

    def generate_until(self, requests) -> list[str]:
        """Answers, ``batch_size`` requests at a time (those with the same ``gen_kwargs``, in order).

        From ``gen_kwargs``: ``max_new_tokens``, ``until`` (stop strings, cut after decoding),
        ``num_beams`` and sampling (``temperature`` > 0, or ``do_sample=True``, with ``top_p`` /
        ``top_k``; the random state is torch's, seeded by lmms-eval's ``--seed``); greedy otherwise.
        """
        answers: list[Optional[str]] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        for indices in groups.values():
            first = requests[indices[0]].args
            kwargs, until = self._generation(first[1], f"{first[4]}/{first[5]} doc {first[3]}")
            for chunk in chunks(indices, self.batch_size):
                batch = self._inputs([requests[i] for i in chunk])
                with torch.no_grad():
                    out = self.model.generate(**batch, **kwargs)
                for i, text in zip(chunk, decode(self.processor, out[:, batch["input_ids"].shape[1] :])):
                    for stop in until:
                        text = text.split(stop)[0]
                    answers[i] = text
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """``(log p(continuation | image, context), whether greedy decoding gives the continuation)``,
        one request at a time.

        The continuation's tokens follow the prompt's generation prefix (the chat template's
        assistant turn opening), as the model would generate them.
        """
        results = []
        for request in requests:
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            target = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self.task_dict[task][split][doc_id])
            batch = self._inputs([request])
            continuation = torch.tensor([tokenize(self.processor, target)], dtype=torch.long)
            if continuation.shape[1] == 0:
                raise ValueError(f"empty continuation for {task}/{split} doc {doc_id}")
            results.append(_continuation_logprob(self.model, batch, continuation))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{MODEL_ID} does not support multi-round generation")


def _spike_config(options: dict) -> SpikeConfig:
    """The ``SpikeConfig`` of the conversion options among the model_args (the command line's
    parser and defaults: :func:`~spikemllm_sj.commands.options.config_from_mapping`). lmms-eval
    has already read ``true`` / ``4`` / ``0.9`` as Python values: they go back to their text."""
    texts = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in options.items()}
    try:
        return config_from_mapping(texts)
    except ValueError as error:
        raise ValueError(f"{MODEL_ID} model_args: {error} (besides the adapter's own: {', '.join(ADAPTER_ARGS)})") from None


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

"""The lmms-eval adapter against the real lmms-eval (0.7.3, installed by the set-up as the `lmms`
extra): its model registry and requests, the model_args (every SpikeConfig field, batch sizes,
calibration data), and a whole ``python -m lmms_eval`` run of the shipped easy-VQA task."""

import glob
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models import get_model
from lmms_eval.utils import load_yaml_config
from PIL import Image

from spikemllm_sj import SpikeConfig, calibrate, convert
from spikemllm_sj.commands.common import EXAMPLE_IMAGE, SAMPLE_DATA, record_batches
from spikemllm_sj.config import RECOMMENDED
from spikemllm_sj.integrations import easyvqa_task
from spikemllm_sj.integrations import lmms_eval as adapter
from spikemllm_sj.models.inputs import decode, encode, generate_tokens
from spikemllm_sj.models.loading import load_model
from spikemllm_sj.neurons import MSTSConfig
from spikemllm_sj.quantization.methods import SmoothQuant

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What colour is the circle?"
# A configuration without calibration, for the tests about requests (the default one calibrates).
PLAIN = {"method": "RTN", "act_clip": 1, "weight_clip": "none"}


@pytest.fixture(scope="module")
def image():
    with Image.open(EXAMPLE_IMAGE) as opened:
        return opened.convert("RGB")


@pytest.fixture(scope="module")
def images(image):
    """Three different images: the example and two flips."""
    return [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]


def instance(kind, *args):
    return Instance(kind, args, 0, {"task": "shapes", "doc_id": args[3], "repeats": 1})


def make(images, model="tiny-llava", **kwargs):
    model = adapter.SpikeMLLM(model=model, **kwargs)
    model.task_dict = {"shapes": {"test": [{"image": im, "answer": "red"} for im in images] + [{"image": images[0], "two": True}]}}
    return model


def visuals(doc):
    return [doc["image"]] * (2 if doc.get("two") else 1)


def ask(doc_id, gen_kwargs=None, question=QUESTION):
    return instance("generate_until", f"<image>\n{question}", dict(gen_kwargs or {"max_new_tokens": 6}), visuals, doc_id, "shapes", "test")


# Registration.


def test_lmms_eval_finds_the_adapter_through_its_entry_point():
    cls = get_model("spikemllm")
    assert cls is adapter.SpikeMLLM
    assert issubclass(cls, lmms) and cls.is_simple and not cls.__abstractmethods__
    manifest = adapter.model_manifest()
    assert manifest.model_id == "spikemllm" and manifest.chat_class_path is None


def test_setup_cfg_declares_the_entry_point_and_the_lmms_extra():
    from configparser import ConfigParser

    cfg = ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "spikemllm = spikemllm_sj.integrations.lmms_eval:model_manifest" in cfg["options.entry_points"]["lmms_eval.models"]
    extra = cfg["options.extras_require"]["lmms"].split()
    pins = {line.split("==")[0].lower() for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    assert "lmms-eval" in pins and {name.lower() for name in extra} <= pins
    assert "lmms-eval" in (ROOT / "Makefile").read_text().split("$(STAMP):")[1].split("touch $(STAMP)")[0]


def test_the_module_imports_without_lmms_eval():
    code = (
        "import sys; sys.modules['lmms_eval'] = None\n"
        "from spikemllm_sj.integrations import lmms_eval as adapter\n"
        "assert adapter.SpikeMLLMRequests.is_simple\n"
        "try:\n    adapter.SpikeMLLM\nexcept ImportError as error:\n    print(type(error).__name__)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ModuleNotFoundError\n"


# Requests.


def test_generate_until_is_the_spiking_model_and_equals_its_twin(images):
    spike, twin = (make(images, mode=mode, **PLAIN) for mode in ("spike", "fake_quant"))
    answer = spike.generate_until([ask(0)])
    assert answer == twin.generate_until([ask(0)])

    model, processor = load_model("tiny-llava")
    convert(model, spike.config)
    assert decode(processor, generate_tokens(model, encode(model, processor, [images[0]], [QUESTION]), 6)) == answer

    stop = answer[0][2:4]
    assert stop and spike.generate_until([ask(0, {"max_new_tokens": 6, "until": [stop]})]) == [answer[0].split(stop)[0]]


@pytest.mark.slow
def test_batches_answer_as_single_requests_in_the_order_given(images):
    one, three = (make(images, mode="fake_quant", batch_size=size, max_batch_size=4, **PLAIN) for size in (1, 3))
    assert three.batch_size == 3
    longer = {"max_new_tokens": 8}
    requests = [ask(0), ask(1, longer), ask(2), ask(1), ask(0, longer, "Which shape is blue?"), ask(2, longer)]
    answers = three.generate_until(requests)
    assert answers == one.generate_until(requests)
    assert answers == [one.generate_until([r])[0] for r in requests]
    assert len(set(answers)) > 1


def test_sampling_follows_the_temperature_and_torchs_random_state(images):
    model = make(images, mode="fake_quant", **PLAIN)
    sampled = {"max_new_tokens": 6, "temperature": 1.5, "top_p": 0.95}
    torch.manual_seed(7)
    first = model.generate_until([ask(0, sampled)])
    batch = encode(model.model, model.processor, [images[0]], [QUESTION])
    torch.manual_seed(7)
    with torch.no_grad():
        out = model.model.generate(**batch, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.95, num_beams=1)
    assert first == decode(model.processor, out[:, batch["input_ids"].shape[1] :])
    torch.manual_seed(8)
    assert model.generate_until([ask(0, sampled)]) != first
    assert model.generate_until([ask(0, {"max_new_tokens": 6, "temperature": 0})]) == model.generate_until([ask(0)])


def test_loglikelihood_aligns_with_greedy_generation(images):
    spike, twin, ann = (make(images, mode=mode, **({} if mode == "float" else PLAIN)) for mode in ("spike", "fake_quant", "float"))
    request = instance("loglikelihood", QUESTION, lambda doc: doc["answer"], visuals, 0, "shapes", "test")
    (value, greedy), = spike.loglikelihood([request])
    assert value < 0 and isinstance(greedy, bool)
    assert twin.loglikelihood([request]) == [(value, greedy)]
    assert ann.loglikelihood([request])[0][0] != value

    # The greedy continuation of the float model: flagged greedy, its log-probability the sum of
    # generate()'s step scores.
    batch = encode(ann.model, ann.processor, [images[0]], [QUESTION])
    out = ann.model.generate(**batch, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences[:, batch["input_ids"].shape[1] :]
    expected = sum(float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, tokens[0]))
    value, greedy = adapter._continuation_logprob(ann.model, batch, tokens)
    assert greedy and value == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    "gen_kwargs, message",
    [
        ({"image_aspect_ratio": "pad"}, r"shapes/test doc 0: gen_kwargs \['image_aspect_ratio'\] are not accepted; accepted: max_new_tokens"),
        ({"do_sample": False, "temperature": 0.5}, r"do_sample=False with temperature=0.5 is not accepted"),
        ({"do_sample": True, "temperature": 0}, r"do_sample=True with temperature=0 is not accepted"),
        ({"temperature": -1}, r"temperature=-1 is not accepted: a number >= 0"),
        ({"max_new_tokens": 0}, r"max_new_tokens=0 is not accepted: max_new_tokens must be a positive integer"),
    ],
)
def test_generation_kwargs_it_cannot_honour_are_refused(images, gen_kwargs, message):
    model = make(images, **PLAIN)
    with pytest.raises(ValueError, match=message):
        model.generate_until([ask(0, gen_kwargs)])


def test_requests_it_cannot_serve_are_refused(images):
    model = make(images, **PLAIN)
    with pytest.raises(ValueError, match="one image per request; shapes/test doc 3 has 2"):
        model.generate_until([ask(3)])
    with pytest.raises(NotImplementedError):
        model.generate_until_multi_round([ask(3)])


# Model arguments.


def test_model_args_give_every_spike_config_field_as_the_command_line_does():
    args = (
        "model=tiny-llava,mode=fake_quant,method=SmoothQuant,method_option=alpha=0.6,weight_method=gptq,weight_bits=6,"
        "weight_clip=mse,act_scales=static,act_clip=0.9,kv_bits=6,kv_clip=0.95,prob_bits=6,convert_lm_head=true,"
        "steps_text=5,steps_image=2"
    )
    model = adapter.SpikeMLLM.create_from_arg_string(args, {"batch_size": "2", "max_batch_size": 4, "device": None})
    assert model.config == SpikeConfig(
        msts=MSTSConfig(steps={"text": 5, "image": 2, "video": 2}), method=SmoothQuant(0.6), weight_method="gptq",
        weight_bits=6, weight_clip="mse", act_scales="static", act_clip=0.9, kv_bits=6, kv_clip=0.95, prob_bits=6,
        convert_lm_head=True,
    )
    assert model.batch_size == 2 and model.calibration_data == SAMPLE_DATA


@pytest.mark.slow
def test_the_default_configuration_is_recommended_and_calibrates_on_the_sample_or_the_given_records(images, tmp_path):
    default = make(images, mode="fake_quant")
    assert default.config == RECOMMENDED and default.config.needs_calibration
    assert default.calibration_data == adapter.default_calibration_data("tiny-llava") == SAMPLE_DATA

    fewer = tmp_path / "two.jsonl"
    fewer.write_text("".join(SAMPLE_DATA.read_text().splitlines(keepends=True)[:2]).replace('"image": "', f'"image": "{SAMPLE_DATA.parent}/'))
    given = make(images, mode="fake_quant", calibration_data=str(fewer))
    assert given.calibration_data == fewer
    batch = encode(default.model, default.processor, [images[0]], [QUESTION])
    for adapted, data in ((default, SAMPLE_DATA), (given, fewer)):
        model, processor = load_model("tiny-llava")
        convert(model, RECOMMENDED, calibration=calibrate(model, record_batches(model, processor, data, 4)[0], RECOMMENDED, progress=False))
        model_logits = _logits(model, "fake_quant", batch)
        assert torch.equal(_logits(adapted.model, "fake_quant", batch), model_logits)
    assert not torch.equal(_logits(default.model, "fake_quant", batch), _logits(given.model, "fake_quant", batch))


def _logits(model, mode, batch):
    from spikemllm_sj.ann2snn.recipe import set_mode

    set_mode(model, mode)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": "auto"}, r"batch_size='auto' is not accepted: spikemllm does not probe memory .* give a positive integer"),
        ({"batch_size": "auto:4"}, r"batch_size='auto:4' is not accepted"),
        ({"batch_size": 0}, r"batch_size=0 is not accepted: batch_size must be a positive integer \('auto' is not supported\)"),
        ({"batch_size": 4, "max_batch_size": 2}, r"batch_size=4 is not accepted: it exceeds max_batch_size=2"),
        ({"max_batch_size": 0}, r"max_batch_size=0 is not accepted: max_batch_size must be a positive integer or None"),
        ({"mode": "ann"}, r"mode='ann' is not accepted: mode must be one of float, fake_quant, spike"),
        ({"dtype": "float16"}, r"dtype='float16' is not accepted: dtype must be one of float32, bfloat16"),
        ({"max_new_tokens": -2}, r"max_new_tokens=-2 is not accepted"),
        ({"colour": "red"}, r"spikemllm model_args: unknown configuration option 'colour'; accepted: .*weight_bits.* \(besides the adapter's own: model, mode, calibration_data"),
        ({"weight_bits": 0}, r"spikemllm model_args: .*weight.bits.*0"),
        ({"method": "Rotate"}, r"spikemllm model_args: .*method.*'Rotate'"),
        ({"mode": "float", "weight_bits": 4}, r"weight_bits given with mode='float': the float model is not converted"),
        ({"calibration_data": "missing.jsonl"}, r"calibration_data='missing.jsonl' is not accepted: not a JSONL file"),
        ({"calibration_data": str(SAMPLE_DATA), **PLAIN}, r"calibration_data=.* given, but this configuration needs no calibration"),
    ],
)
def test_bad_model_args_are_refused_naming_the_argument_and_the_accepted_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        adapter.SpikeMLLM(model="tiny-llava", **kwargs)


# The easy-VQA task.


def test_the_task_scores_normalised_exact_match():
    doc = {"question": "what colour is the circle?", "answer": "red", "image": "test/images/0.png"}
    assert easyvqa_task.process_results(doc, ["Red."]) == {"accuracy": 1.0}
    assert easyvqa_task.process_results(doc, ["the red"]) == {"accuracy": 1.0}
    assert easyvqa_task.process_results(doc, ["blue"]) == {"accuracy": 0.0}
    assert easyvqa_task.doc_to_text(doc) == doc["question"]


def test_the_shipped_task_data_is_what_its_generator_writes(tmp_path):
    pytest.importorskip("easy_vqa", reason="the easy-vqa package (make weights)")
    written = easyvqa_task.write_task_data(tmp_path / "test.jsonl")
    assert written.read_text() == easyvqa_task.TASK_DATA.read_text()
    docs = [json.loads(line) for line in written.read_text().splitlines()]
    assert len(docs) == easyvqa_task.QUESTIONS and [d["doc_id"] for d in docs] == list(range(len(docs)))
    assert len({d["image_id"] for d in docs}) == len(docs)
    (picture,) = easyvqa_task.doc_to_visual(docs[0])
    assert picture.size == (64, 64) and picture.mode == "RGB"
    assert importlib.util.spec_from_file_location("utils", easyvqa_task.TASK_DIR / "utils.py") is not None


# A real lmms-eval run: the CLI in a subprocess, offline, on the trained easy-VQA LLaVA.

# The spiking model with a rotation that needs no calibration (80.4% on docs/fidelity.md's 500 questions):
# the default configuration's calibration and clip search take 5-12 minutes on this 2-core CPU.
EASYVQA_ARGS = {"model": "easyvqa-llava", "mode": "spike", "method": "Hadamard", "act_clip": 1, "weight_clip": "none"}
LIMIT, BATCH = 8, 4


@pytest.mark.slow
@pytest.mark.weights
def test_python_m_lmms_eval_runs_the_easyvqa_task_offline_and_reports_the_adapters_accuracy(tmp_path):
    pytest.importorskip("easy_vqa", reason="the easy-vqa package (make weights)")
    model_args = ",".join(f"{k}={v}" for k, v in EASYVQA_ARGS.items())
    command = [
        sys.executable, "-m", "lmms_eval", "--model", "spikemllm", "--model_args", model_args, "--tasks", easyvqa_task.TASK,
        "--include_path", str(easyvqa_task.TASK_DIR), "--limit", str(LIMIT), "--batch_size", str(BATCH),
        "--output_path", str(tmp_path / "results"), "--log_samples",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    start = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=540)
    elapsed = time.monotonic() - start
    assert run.returncode == 0, run.stderr[-3000:]
    table = next(line for line in run.stdout.splitlines() if line.startswith("|easyvqa"))
    cells = [cell.strip() for cell in table.strip("|").split("|")]
    (results_file,) = glob.glob(str(tmp_path / "results" / "*" / "*_results.json"))
    (samples_file,) = glob.glob(str(tmp_path / "results" / "*" / "*_samples_easyvqa.jsonl"))
    reported = json.loads(Path(results_file).read_text())["results"]["easyvqa"]["accuracy,none"]
    assert cells[3] == "accuracy" and float(cells[5]) == pytest.approx(reported, abs=1e-4)
    samples = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == list(range(LIMIT))

    # The adapter directly, on the same documents and generation settings.
    docs = [json.loads(line) for line in easyvqa_task.TASK_DATA.read_text().splitlines()][:LIMIT]
    model = adapter.SpikeMLLM(**EASYVQA_ARGS, batch_size=BATCH)
    model.task_dict = {"easyvqa": {"test": docs}}
    gen_kwargs = load_yaml_config(str(easyvqa_task.TASK_DIR / "easyvqa.yaml"), mode="simple")["generation_kwargs"]
    requests = [instance_for(doc, gen_kwargs) for doc in docs]
    answers = model.generate_until(requests)
    scores = [easyvqa_task.process_results(doc, [answer])["accuracy"] for doc, answer in zip(docs, answers)]
    assert [s["filtered_resps"] for s in samples] == answers
    assert reported == pytest.approx(sum(scores) / LIMIT, abs=1e-12)
    print(f"lmms-eval easyvqa --limit {LIMIT}: accuracy {reported:.3f} in {elapsed:.0f} s")


def instance_for(doc, gen_kwargs):
    args = (easyvqa_task.doc_to_text(doc), gen_kwargs, easyvqa_task.doc_to_visual, doc["doc_id"], "easyvqa", "test")
    return Instance("generate_until", args, 0, {"task": "easyvqa", "doc_id": doc["doc_id"], "repeats": 1})

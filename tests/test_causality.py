"""Every quantization scale of a position depends only on that position and those it attends to:
a row's spiking logits are the same alone, left-padded in a batch of longer rows, and as the prefix
of a longer input, and a KV-cached decode equals the full forward."""

import pytest
import torch
from conftest import convert_tiny

from spikemllm_sj import SpikeConfig
from spikemllm_sj.models.tiny import TINY_MODELS, tiny_batch


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def with_tokens(batch: dict, extra: torch.Tensor) -> dict:
    """``batch`` (one row) with the text tokens ``extra`` ``[1, k]`` appended."""
    out = dict(batch, input_ids=torch.cat([batch["input_ids"], extra], 1))
    out["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(extra)], 1)
    if "mm_token_type_ids" in batch:
        out["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(extra)], 1)
    return out


def generation_positions(batch: dict) -> dict:
    """Position ids from the attention mask, as ``generate`` makes them for left-padded rows
    (Qwen2-VL families compute their own M-RoPE positions from the mask)."""
    if "mm_token_type_ids" in batch:
        return batch
    mask = batch["attention_mask"]
    return dict(batch, position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 0))


@pytest.fixture(scope="module", params=TINY_MODELS)
def family(request):
    return convert_tiny(request.param)


def test_a_row_is_the_same_alone_and_left_padded_among_longer_rows(family):
    alone = tiny_batch(family.model, batch_size=1)
    batch = generation_positions(tiny_batch(family.model, batch_size=3))  # row 0 is the shortest
    n = alone["input_ids"].shape[1]
    assert int(batch["attention_mask"][0].sum()) == n < batch["input_ids"].shape[1]
    assert torch.equal(logits(family.model, batch)[0, -n:], logits(family.model, alone)[0])


def test_a_row_is_the_same_as_the_prefix_of_a_longer_input(family):
    alone = tiny_batch(family.model, batch_size=1)
    n = alone["input_ids"].shape[1]
    extra = torch.randint(3, 500, (1, 9), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits(family.model, with_tokens(alone, extra))[0, :n], logits(family.model, alone)[0])


def cached_and_full(model, prompt, new_tokens=5):
    """The logits of a KV-cached greedy decode and of one full forward over the same tokens,
    predicting each generated token ``[new_tokens, V]``, and the generated tokens."""
    n = prompt["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    generated = out.sequences[:, n:]
    full = logits(model, with_tokens(prompt, generated))[0, n - 1 : n - 1 + new_tokens]
    return torch.stack(out.logits)[:, 0], full, generated


@pytest.mark.parametrize("name", TINY_MODELS)
def test_a_kv_cached_decode_equals_the_full_forward(name):
    # With a spike-driven output head every non-float step is exact integer work on the same
    # levels: the cached decode equals the full forward bit for bit.
    model = convert_tiny(name, SpikeConfig(convert_lm_head=True)).model
    cached, full, generated = cached_and_full(model, tiny_batch(model, batch_size=1))
    assert torch.equal(cached, full) and torch.equal(generated[0], full.argmax(-1))


def test_a_kv_cached_decode_with_the_float_head_differs_only_by_the_heads_rounding(family):
    # The float head multiplies one row in decode and all rows in the full forward: its kernels
    # round differently (the float model differs by the same ~1e-7); the tokens are the same.
    cached, full, generated = cached_and_full(family.model, tiny_batch(family.model, batch_size=1))
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    assert torch.equal(generated[0], full.argmax(-1))

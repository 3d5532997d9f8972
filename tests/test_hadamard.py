"""Full-size randomised Hadamard rotations: the constructions (Sylvester, Paley I/II over GF(p^e)),
the fast transform against dense references, the seeded random orthogonal fallback, and the
Hadamard method on converted models."""

import math

import pytest
import torch
import transformers

from spikemllm_sj import SpikeConfig, convert, load_spiking, save_spiking, set_mode
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_batch, tiny_spec
from spikemllm_sj.quantization.finite_field import FiniteField, prime_power
from spikemllm_sj.quantization.hadamard import (
    HadamardOrder,
    NoHadamardOrder,
    hadamard_block,
    hadamard_matrix,
    hadamard_order,
    paley,
    sylvester,
)
from spikemllm_sj.quantization.methods import Hadamard, method_from_dict
from spikemllm_sj.quantization.transforms import HadamardRotation, RandomOrthogonal, rotation

# Every hidden, intermediate and head size of the tiny families, the real LMs here and the real
# checkpoints of the five families, with the factorization H_m (x) H_(2^k) expected for it.
MODEL_SIZES = {
    16: ("tiny head dim", 1, None),
    32: ("tiny vision hidden", 1, None),
    64: ("tiny hidden; SmolLM2 / InternViT / CLIP-L head dim", 1, None),
    128: ("tiny intermediate; trained LLaVA vision hidden; Qwen2 / InternLM2 head dim", 1, None),
    512: ("trained LLaVA vision intermediate", 1, None),
    576: ("SmolLM2-135M hidden", 36, 17),
    1536: ("SmolLM2-135M intermediate", 12, 11),
    640: ("Gemma-3-270M hidden", 20, 19),
    2048: ("Gemma-3-270M intermediate", 1, None),
    256: ("Gemma-3-270M head dim", 1, None),
    3584: ("Qwen2-7B hidden (Qwen2-VL-7B, Qwen2.5-VL-7B, LLaVA-OneVision-7B)", 28, 27),
    18944: ("Qwen2-7B intermediate", 148, 73),
    1280: ("Qwen2-VL vision hidden", 20, 19),
    5120: ("Qwen2-VL vision intermediate and merger", 20, 19),
    80: ("Qwen2-VL vision head dim", 20, 19),
    3420: ("Qwen2.5-VL-7B vision intermediate", 3420, 1709),
    8192: ("Qwen2-VL-72B hidden", 1, None),
    29568: ("Qwen2-VL-72B intermediate", 924, 461),
    4096: ("InternLM2-7B / LLaMA-7B hidden; InternViT-300M / CLIP-L intermediate", 1, None),
    14336: ("InternLM2-7B intermediate", 28, 27),
    1024: ("InternViT-300M / CLIP-L hidden", 1, None),
    11008: ("LLaVA-1.5-7B intermediate", 344, 343),
    1152: ("SigLIP-so400m hidden (LLaVA-OneVision)", 36, 17),
    72: ("SigLIP-so400m head dim", 36, 17),
}
# Sizes without a construction here (no Paley matrix of order 1076 = 4 x 269, 2152 or 4304; H_92 is
# Williamson's): the rotation refuses them unless the random orthogonal fallback is asked for.
NO_HADAMARD = {4304: "SigLIP-so400m intermediate (LLaVA-OneVision)", 92: "no Paley matrix of order 92"}
DENSE_CHECK_MAX = 1536  # sizes up to this are checked as whole dense matrices, larger ones by sampled rows


def is_hadamard(h: torch.Tensor) -> bool:
    """``H H^T == m I`` exactly: entries +-1, so float32 sums of at most 2**24 terms are exact."""
    m = h.shape[0]
    h = h.float()
    return bool(((h == 1) | (h == -1)).all()) and torch.equal(h @ h.T, m * torch.eye(m))


def dense_rows(t: HadamardRotation, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of ``Q = diag(s) (H_m (x) H_b) / sqrt(n)`` from the Kronecker definition (no
    fast transform): row ``i`` is ``s_i kron(H_m[i // b], H_b[i % b]) / sqrt(n)``."""
    b = t.order.block
    h_m, h_b = hadamard_block(t.order), sylvester(b)
    out = torch.stack([torch.kron(h_m[int(i) // b].double(), h_b[int(i) % b].double()) for i in rows])
    return out * t.signs[rows, None].double() / math.sqrt(t.size)


def dense_columns(t: HadamardRotation, cols: torch.Tensor) -> torch.Tensor:
    """Columns ``cols`` of ``Q`` ``[n, len(cols)]`` from the Kronecker definition (see :func:`dense_rows`)."""
    b = t.order.block
    h_m, h_b = hadamard_block(t.order), sylvester(b)
    out = torch.stack([torch.kron(h_m[:, int(c) // b].double(), h_b[:, int(c) % b].double()) for c in cols], dim=1)
    return out * t.signs[:, None].double() / math.sqrt(t.size)


# Finite fields.


def test_prime_power_against_a_sieve():
    limit = 3000
    composite = torch.zeros(limit + 1, dtype=torch.bool)
    powers = {}
    for p in range(2, limit + 1):
        if not composite[p]:
            composite[p * p :: p] = True
            q, e = p, 1
            while q <= limit:
                powers[q], q, e = (p, e), q * p, e + 1
    assert all(prime_power(q) == powers.get(q) for q in range(0, limit + 1))
    with pytest.raises(TypeError, match="q must be an int"):
        prime_power(27.0)


@pytest.mark.parametrize("q", [3, 5, 7, 11, 13, 17, 19, 73, 461, 1709])
def test_quadratic_character_of_a_prime_field_is_eulers_criterion(q):
    chi = FiniteField(q).quadratic_character()
    euler = [0] + [1 if pow(a, (q - 1) // 2, q) == 1 else -1 for a in range(1, q)]
    assert chi.tolist() == euler


@pytest.mark.parametrize("q", [9, 25, 27, 49, 81, 121, 125, 169, 243, 343, 361, 729])
def test_prime_power_fields_have_an_irreducible_modulus_and_half_the_units_square(q):
    field = FiniteField(q)
    p, e = field.p, field.e
    assert p**e == q and len(field.modulus) == e + 1 and field.modulus[-1] == 1
    if e <= 3:  # degree 2 or 3: irreducible iff no root in GF(p)
        assert all(sum(c * x**i for i, c in enumerate(field.modulus)) % p for x in range(p))
    chi = field.quadratic_character()
    assert int((chi == 1).sum()) == (q - 1) // 2 and int((chi == -1).sum()) == (q - 1) // 2 and chi[0] == 0
    # -1 (code p - 1) is a square iff q = 1 mod 4.
    assert int(chi[p - 1]) == (1 if q % 4 == 1 else -1)


def test_finite_field_refuses_non_prime_powers():
    with pytest.raises(ValueError, match="order must be a prime power p\\*\\*e .* got 12"):
        FiniteField(12)
    with pytest.raises(TypeError, match="order must be an int"):
        FiniteField(9.0)


# Constructions.


def test_every_claimed_order_up_to_400_is_hadamard():
    claimed, refused = [], []
    for m in range(4, 401, 4):
        try:
            order = hadamard_order(m)
        except NoHadamardOrder:
            refused.append(m)
            continue
        assert is_hadamard(hadamard_block(order)), m
        claimed.append(m)
    # Neither m - 1 nor m/2 - 1 a fitting prime power, and m/2 no Hadamard order: no Paley matrix.
    assert refused == [92, 116, 156, 172, 184, 188, 232, 236, 260, 268, 292, 324, 356, 372, 376]
    # QuaRot's table (12, 20, 28, 36, 52, 60, 76, ...), and the prime powers 27, 25, 343 among them.
    assert {12, 20, 28, 36, 44, 52, 60, 68, 76, 84, 100, 108, 148, 244, 344} <= set(claimed)
    assert hadamard_order(28).q == 27 and hadamard_order(52).q == 25 and hadamard_order(344).q == 343


@pytest.mark.parametrize("order", [1, 2, 4, 64, 1024])
def test_sylvester_is_hadamard_and_symmetric(order):
    h = sylvester(order)
    assert is_hadamard(h) and torch.equal(h, h.T)


@pytest.mark.parametrize("order", [2048, 8192])
def test_large_sylvester_is_the_walsh_matrix(order):
    # H[i, j] = (-1)^popcount(i & j): the characters of (Z_2)^k, orthogonal for every k (a Gram
    # matrix of order 8192 would cost a TFLOP).
    i = torch.arange(order, dtype=torch.int16)
    parity = i[:, None] & i[None, :]
    for shift in (8, 4, 2, 1):  # fold the bits of i & j (< 2**16) onto bit 0
        parity ^= parity >> shift
    assert torch.equal(sylvester(order), (1 - 2 * (parity & 1)).to(torch.int8))


@pytest.mark.parametrize("size", [24, 96, 576, 640, 1152, 1536])
def test_hadamard_matrix_mixes_every_channel_into_every_other(size):
    # Was I_(n/2^k) (x) H_(2^k): for 576 = 9 x 64 nine blocks of 64 and zeros everywhere else.
    h = hadamard_matrix(size)
    torch.testing.assert_close(h.abs(), torch.full_like(h, size**-0.5), rtol=1e-12, atol=0)
    torch.testing.assert_close(h @ h.T, torch.eye(size, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_model_sizes_get_a_full_randomised_hadamard(size):
    _, m, q = MODEL_SIZES[size]
    t = rotation(size, seed=1)
    assert isinstance(t, HadamardRotation) and t.kind == "hadamard"
    assert (t.order.m, t.order.q, t.order.m * t.order.block) == (m, q, size)
    assert is_hadamard(hadamard_block(t.order))  # the Sylvester factor: see the tests above
    if size <= DENSE_CHECK_MAX:
        q_dense = t.matrix(size)
        rows = torch.arange(size)
        torch.testing.assert_close(q_dense @ q_dense.T, torch.eye(size, dtype=torch.float64), rtol=0, atol=1e-12)
    else:
        rows = torch.cat([torch.tensor([0, size - 1]), torch.randperm(size, generator=torch.Generator().manual_seed(0))[:62]])
        q_dense = t(torch.nn.functional.one_hot(rows, size).double())
        torch.testing.assert_close(q_dense @ q_dense.T, torch.eye(len(rows), dtype=torch.float64), rtol=0, atol=1e-12)
    # No zero entry, no zero block: every input channel reaches every output channel equally.
    torch.testing.assert_close(q_dense.abs(), torch.full_like(q_dense, size**-0.5), rtol=1e-12, atol=0)
    torch.testing.assert_close(q_dense, dense_rows(t, rows), rtol=0, atol=1e-14)


# The fast transform.


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("size", [24, 576, 1536, 3584, 11008, 3420])
def test_fast_transform_equals_the_dense_product_and_inverts(size, dtype, tol):
    t = rotation(size, seed=2)
    # Whole dense references up to DENSE_CHECK_MAX, else a few output channels of x Q and x Q^T.
    cols = torch.arange(size) if size <= DENSE_CHECK_MAX else torch.tensor([0, 5, size // 2, size - 1])
    q_cols, q_rows = dense_columns(t, cols), dense_rows(t, cols)

    def close(a, b):  # normwise, to the float tolerance of the dtype
        assert float((a.double() - b).norm() / b.norm()) < tol

    for lead in [(), (3,), (2, 3, 5)]:
        x = torch.randn(*lead, size, generator=torch.Generator().manual_seed(size), dtype=torch.float64).to(dtype)
        y, back = t(x), t.inverse(t(x))
        assert y.dtype == dtype and back.dtype == dtype and y.shape == x.shape  # no float64 upcast
        close(y[..., cols], x.double() @ q_cols)
        close(t.inverse(x)[..., cols], x.double() @ q_rows.T)
        close(back, x.double())  # x Q Q^T == x


def test_inverse_is_the_transpose_and_matrix_is_orthogonal():
    t = rotation(1536, seed=4)
    q = t.matrix(1536)
    torch.testing.assert_close(t.inverse(torch.eye(1536, dtype=torch.float64)), q.T, rtol=0, atol=1e-14)
    torch.testing.assert_close(q.T @ q, torch.eye(1536, dtype=torch.float64), rtol=0, atol=1e-12)


def test_float16_sums_stay_in_range():
    # Worst case for output 0: an input aligned with the signs and row 0 of H (all ones).
    t = rotation(4096)
    x = (500.0 * t.signs.to(torch.float16))[None]
    y = t(x)
    assert torch.isfinite(y).all() and float(y[0, 0]) == pytest.approx(500.0 * 64, rel=1e-3)


def test_signs_are_seeded():
    a, b, c = rotation(576, seed=7), rotation(576, seed=7), rotation(576, seed=8)
    assert torch.equal(a.signs, b.signs) and not torch.equal(a.signs, c.signs)
    assert set(a.signs.tolist()) == {-1, 1} and rotation(576).seed == 0
    assert "H_36 (Paley II, q=17) (x) H_16 (Sylvester)" in repr(a) and "seed=7" in repr(a)


def test_storage_is_the_sign_vector_and_the_small_block():
    t = rotation(11008)
    buffers = dict(t.named_buffers())
    assert {k: (tuple(v.shape), v.dtype) for k, v in buffers.items()} == {
        "signs": ((11008,), torch.int8), "block": ((344, 344), torch.int8), "kernel": ((16, 16), torch.int8),
    }
    assert sum(v.numel() * v.element_size() for v in buffers.values()) == 11008 + 344 * 344 + 16 * 16
    assert list(t.state_dict()) == ["signs", "block", "kernel"]  # saved: a meta-device loader restores only those
    assert t.to(torch.bfloat16).signs.dtype == torch.int8  # +-1 stays exact whatever the model's dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fold_is_the_transform_on_the_rows_of_the_weight(dtype):
    t = rotation(24, seed=3)
    w = torch.randn(4100, 24, generator=torch.Generator().manual_seed(0)).to(dtype)  # crosses a row block
    folded = t.fold(w)
    assert folded.dtype == dtype
    ref = (w.double() @ dense_rows(t, torch.arange(24))).to(dtype)
    torch.testing.assert_close(folded, ref, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-6)


# The fallback and the errors.


@pytest.mark.parametrize("size", sorted(NO_HADAMARD))
def test_sizes_without_a_construction_are_refused(size):
    with pytest.raises(NoHadamardOrder, match=f"size={size} "):
        hadamard_order(size)
    with pytest.raises(ValueError, match=f"size={size} .*pass fallback=True"):
        Hadamard().prepare_linear(torch.ones(2, size), None)


def test_no_hadamard_order_and_no_fallback_is_an_error_naming_size():
    with pytest.raises(ValueError, match=r"size=4304 = 269 \* 2\*\*4 has no Hadamard construction.*m=1076.*m=2152.*m=4304.*fallback=True"):
        rotation(4304)
    with pytest.raises(ValueError, match=r"size=92 .*m=92 \(neither q=m-1=91 .* nor q=m/2-1=45"):
        rotation(92)
    with pytest.raises(ValueError, match=r"size=6 .*orders m tried: none"):
        rotation(6)
    with pytest.raises(ValueError, match="size must be an int >= 1, got 0"):
        rotation(0, fallback=True)
    with pytest.raises(ValueError, match="size must be an int >= 1, got True"):
        rotation(True)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*64\), got -1"):
        rotation(64, seed=-1)
    with pytest.raises(ValueError, match="fallback must be a bool, got 'yes'"):
        rotation(64, fallback="yes")
    with pytest.raises(ValueError, match="input has 63 features .* expects 64"):
        rotation(64)(torch.ones(2, 63))
    with pytest.raises(ValueError, match="q must be an odd prime power, got 15"):
        paley(15)
    assert str(HadamardOrder(24, 12, "paley1", 11)) == "H_12 (Paley I, q=11) (x) H_2 (Sylvester)"
    with pytest.raises(ValueError, match="construction='paley2' does not build H_12 with q=11"):
        HadamardOrder(24, 12, "paley2", 11)  # Paley II's H_12 has q = 5
    with pytest.raises(ValueError, match="size=36 is not m=12 times a power of two"):
        HadamardOrder(36, 12, "paley1", 11)
    with pytest.raises(ValueError, match="order must be a power of two .* got 12"):
        sylvester(12)


def test_fallback_is_a_seeded_random_orthogonal_rotation():
    t = rotation(92, seed=5, fallback=True)
    assert isinstance(t, RandomOrthogonal) and t.kind == "random_orthogonal" and "seed=5" in repr(t)
    q = t.matrix(92)
    torch.testing.assert_close(q @ q.T, torch.eye(92, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (q != 0).all()
    assert torch.equal(rotation(92, seed=5, fallback=True).q, t.q) and not torch.equal(rotation(92, seed=6, fallback=True).q, t.q)
    x = torch.randn(3, 92)
    torch.testing.assert_close(t.inverse(t(x)), x, rtol=1e-5, atol=1e-5)
    # A size with a Hadamard construction never falls back.
    assert isinstance(rotation(576, fallback=True), HadamardRotation)


# The Hadamard method.


def test_hadamard_method_folds_by_the_fast_transform_and_stores_no_dense_matrix():
    w = torch.randn(16, 576, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 576, generator=torch.Generator().manual_seed(1))
    folded, transform = Hadamard().prepare_linear(w, None)
    stored = sum(b.numel() * b.element_size() for b in transform.buffers())
    assert stored < 576 * 576, f"{stored} bytes of buffers: a dense [576, 576] rotation"
    assert folded.dtype == w.dtype and transform(x).dtype == x.dtype
    torch.testing.assert_close(transform(x) @ folded.T, x @ w.T, rtol=1e-5, atol=1e-5)
    q = transform.matrix(576)
    assert (q.abs() > 0.5 * 576**-0.5).all()  # mixes every input channel into every output channel


def test_hadamard_method_fields_round_trip_and_are_validated():
    method = Hadamard(seed=7, fallback=True)
    assert method.to_dict() == {"name": "Hadamard", "seed": 7, "fallback": True}
    assert method_from_dict(method.to_dict()) == method and method_from_dict({"name": "Hadamard"}) == Hadamard()
    config = SpikeConfig(method=method)
    assert SpikeConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="seed must be an int"):
        Hadamard(seed=1.5)
    with pytest.raises(ValueError, match="fallback must be a bool, got 1"):
        Hadamard(fallback=1)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_every_family_with_hadamard_equals_its_twin_bit_for_bit(name, one_thread):
    model = build_tiny_model(name)
    batch = tiny_batch(model, batch_size=2, padding=True)
    snn = convert(model, SpikeConfig(method=Hadamard(seed=1)))
    sites = [m for m in snn.modules() if isinstance(m, SpikeLinear)]
    assert sites and all(
        isinstance(s.transform, HadamardRotation) and s.transform.size == s.in_features and s.transform.seed == 1
        for s in sites
    )
    with torch.no_grad():
        spike = snn(**batch).logits
        set_mode(snn, "fake_quant")
        assert torch.equal(snn(**batch).logits, spike)


def test_saved_and_loaded_hadamard_model_rebuilds_the_same_rotation(tmp_path, one_thread):
    model = convert(build_tiny_model("tiny-llava"), SpikeConfig(method=Hadamard(seed=5)))
    batch = tiny_batch(model, batch_size=2)
    save_spiking(model, tmp_path)
    loaded = load_spiking(tmp_path)
    path = "model.language_model.layers.0.mlp.down_proj"
    assert loaded.get_submodule(path).transform.seed == 5
    assert torch.equal(loaded.get_submodule(path).transform.signs, model.get_submodule(path).transform.signs)
    assert not torch.equal(model.get_submodule(path).transform.signs, rotation(128, seed=0).signs)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_a_size_without_hadamard_order_is_refused_before_any_change_unless_the_fallback_is_on(one_thread):
    config = tiny_spec("tiny-llava").config()
    config.text_config.intermediate_size = 92  # the down projection's input: no Hadamard order here
    model = transformers.LlavaForConditionalGeneration(config).eval()
    batch = tiny_batch(model, batch_size=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"Hadamard\(\): model.language_model.layers.0.mlp.down_proj has in_features=92: size=92 .*Hadamard\(fallback=True\)"):
        convert(model, SpikeConfig(method=Hadamard()))
    assert not any(isinstance(m, SpikeLinear) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    snn = convert(model, SpikeConfig(method=Hadamard(fallback=True)))
    kinds = {p: m.transform.kind for p, m in snn.named_modules() if isinstance(m, SpikeLinear)}
    assert {p for p, k in kinds.items() if k == "random_orthogonal"} == {
        f"model.language_model.layers.{i}.mlp.down_proj" for i in range(config.text_config.num_hidden_layers)
    }
    with torch.no_grad():
        spike = snn(**batch).logits
        set_mode(snn, "fake_quant")
        assert torch.equal(snn(**batch).logits, spike)

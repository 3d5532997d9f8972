"""The spike-driven products of sites of a whole converted model, as a Lava Process: the layers'
integer weights, and the attention modules' integer keys and values (their KV caches), as state."""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from spikemllm_sj.lava_backend._site_calls import check_accumulator
from spikemllm_sj.lava_backend.model_plan import NEURON_FIELDS, SYNAPSE_FIELDS, SiteCall, SiteSpec

__all__ = ["SpikeSynapse"]

KINDS = ("linear", "attention.qk", "attention.pv")


def _operand_shape(site: SiteSpec, calls: ty.Sequence[SiteCall]) -> tuple[int, ...]:
    """``[out, in]`` weights of a linear site; ``[G, S, d]`` cache of an attention site, sized for
    the most rows, positions and the head size its calls need."""
    if site.kind == "linear":
        return tuple(np.asarray(site.weights).shape)
    return max(c.groups for c in calls), max(c.keep + c.new for c in calls), calls[0].cache_dim


def _check_site(site: SiteSpec, calls: ty.Sequence[SiteCall]) -> None:
    """Refuse, before anything runs, a site whose operand or accumulator cannot be represented."""
    if site.kind not in KINDS:
        raise ValueError(f"{site.name}: kind must be one of {KINDS}, got {site.kind!r}")
    if site.kind == "linear":
        shape = np.asarray(site.weights).shape
        if shape != (calls[0].fan_out, calls[0].fan_in):
            raise ValueError(f"{site.name}: weights of shape {shape}, its calls need {(calls[0].fan_out, calls[0].fan_in)}")
        check_accumulator(site)
    else:
        _, positions, dim = _operand_shape(site, calls)
        check_accumulator(site, dim if site.kind == "attention.qk" else positions)


class SpikeSynapse(AbstractProcess):
    """Integer operands driven by the spikes of the neurons of the same sites, integrating each
    call's window by Horner's rule: ``[G, M, K]`` spikes x ``[G, K, N]`` operand -> ``[G, M, N]``.

    The integer operands are the process's state (Var ``operand``, one region per site):

    * a linear site: its weights ``W`` ``[out, in]`` (``K = in``, ``N = out``, ``G = 1``);
    * ``"attention.qk"``: the integer keys ``[G, S, d]`` of its KV cache (per batch row and query
      head: with grouped-query attention the keys as the site sees them, repeated per query head,
      so the cache's bytes are an upper bound, as the analytic model's), driven by the query
      spikes: ``N = S``, the positions so far;
    * ``"attention.pv"``: the integer values ``[G, S, d]``, driven by the probability spikes
      (``K = S``).

    At a call's first step a cache keeps the call's ``keep`` positions and writes the ``new``
    ones the decoded stages send (the quantized keys or values of the new tokens): the cache grows
    as tokens stream in and persists across decode steps. Every step of the window::

        acc = W s_t                        first step
        acc = leak * acc + W s_t           later steps (Horner's rule: leak 2 for TC-LIF, 1 for rate codes)

    and at the last step ``a_out`` carries ``acc - offset * sum_K W`` (the offset of offset codes,
    per token), exactly the product of the integer levels with the operand, followed by this
    process's accounting of the call (:data:`~spikemllm_sj.lava_backend.model_plan.SYNAPSE_FIELDS`)
    and the neurons' (which arrive with the spikes). The accounting is the accelerator's, step by
    step: synaptic operations (spikes times fan-out ``N``, per modality), processing-element
    cycles (``ceil(synops of the step / pe_count)``: a step's accumulates finish before the next
    step's shift), HBM bytes (the weights once per call; a cache's positions read once and the new
    ones written) and SRAM bytes (the bytes staged from HBM, and one operand read per synaptic
    operation, at the operand's width). At other steps ``a_out`` carries zeros.

    :param calls: the calls of its sites.
    :param sites: the sites (kinds, codes, operand widths, the weights of linear sites).
    :param payload_width: width of the decoded stages' message; ``acc_width``: of the
        accumulator region of ``a_out``.
    :param pe_count: accumulates per cycle of the accelerator.
    :raises ValueError: an integer operand does not fit its width, or a window's partial sums
        could leave int32: before anything runs, naming the site.
    """

    def __init__(
        self,
        *,
        calls: ty.Sequence[SiteCall],
        sites: ty.Sequence[SiteSpec],
        payload_width: int,
        acc_width: int,
        pe_count: int,
        name: ty.Optional[str] = None,
        log_config: ty.Optional[LogConfig] = None,
    ) -> None:
        layout, parts, offset = {}, [], 0
        for site in sites:
            site_calls = [c for c in calls if c.site == site.name]
            _check_site(site, site_calls)
            shape = _operand_shape(site, site_calls)
            size = int(np.prod(shape))
            layout[site.name] = (offset, shape)
            parts.append(np.asarray(site.weights, dtype=np.int32).reshape(-1) if site.kind == "linear" else np.zeros(size, np.int32))
            offset += size
        super().__init__(calls=tuple(calls), layout=layout, kinds={s.name: s.kind for s in sites},
                         codes={s.name: dict(s.codes) for s in sites}, bits={s.name: s.operand_bits for s in sites},
                         acc_width=acc_width, pe_count=pe_count, name=name, log_config=log_config)
        spikes = max(c.groups * c.rows * c.fan_in for c in calls) + 2 * len(NEURON_FIELDS)
        self.s_in = InPort(shape=(spikes,))
        self.payload_in = InPort(shape=(payload_width,))
        self.a_out = OutPort(shape=(acc_width + 2 * (len(SYNAPSE_FIELDS) + len(NEURON_FIELDS)),))
        self.operand = Var(shape=(offset,), init=np.concatenate(parts))

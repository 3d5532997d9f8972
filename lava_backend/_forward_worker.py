"""The thread of :class:`~spikemllm_sj.lava_backend.decoded_forward.process.DecodedForward` that runs
the model's torch code, pausing at each spike-driven site until Lava brings the product back."""

from __future__ import annotations

import queue
import threading
import traceback
import typing as ty

import numpy as np
import torch
from spikingjelly.activation_based.op_counter import DispatchCounterMode

from spikemllm_sj.analysis.op_report import non_spiking_counter, scope_aliases
from spikemllm_sj.ann2snn.sites import SpikeSite
from spikemllm_sj.lava_backend._fixed_point import float_words
from spikemllm_sj.lava_backend._site_calls import count_words
from spikemllm_sj.lava_backend.model_plan import Generation, ModelPlan, SiteCall, greedy_generate

__all__ = ["ForwardWorker"]

# Seconds the Lava side waits for the model's code to reach its next call: the code between two
# calls takes milliseconds to seconds (a large model's vision tower on a slow CPU); ten minutes
# of silence means the thread is stuck.
WORKER_TIMEOUT_S = 600.0


class ForwardWorker:
    """Runs ``session``'s generation in a thread; :meth:`payload`, :meth:`reply` and
    :meth:`readout` are called from the Lava process model's steps.

    The thread and the process model meet at each site call (the call's input goes out, its
    product comes back) and at each forward's end; an error in the model's code is raised on the
    Lava side at the next meeting, with its traceback.
    """

    def __init__(self, session, plan: ModelPlan):
        self._session, self._plan = session, plan
        self._events: queue.Queue = queue.Queue()
        self._replies: queue.Queue = queue.Queue()
        self._next = 0  # index of the next call the model's code makes
        self._forward = 0
        self._ops = 0  # non-spiking work counted up to the last meeting
        self._segments: dict[int, int] = {}
        self._scopes: dict[str, int] = {}
        threading.Thread(target=self._main, name="DecodedForward", daemon=True).start()

    # The model's side (the thread).

    def _main(self) -> None:
        model = self._session.model
        torch.set_num_threads(1)  # torch in a forked process: no thread pool inherited from the parent
        self._names = {id(m): n for n, m in model.named_modules() if isinstance(m, SpikeSite)}
        self._aliases = {scope: scope_aliases(model, scope) for scope in self._plan.scopes}
        self._counter = non_spiking_counter()
        handles = [model.register_forward_hook(self._forward_end, with_kwargs=True)]
        try:
            for module in model.modules():
                if isinstance(module, SpikeSite):
                    module.product_backend = self._product
            with DispatchCounterMode([self._counter]):
                done = greedy_generate(model, self._session.batch, self._session.decode_steps, Generation())
            generated = done.sequences[:, -len(self._plan.readouts) :]
            self._events.put(("done", 0, generated.reshape(-1).numpy().astype(np.int64)))
        except BaseException:  # noqa: BLE001 - reported on the Lava side
            self._events.put(("error", traceback.format_exc()))
        finally:
            for handle in handles:
                handle.remove()

    def _product(self, site, levels: torch.Tensor, ids: ty.Optional[torch.Tensor], other: torch.Tensor, other_qmax: int):
        if self._next >= len(self._plan.calls):
            raise RuntimeError(f"{self._names[id(site)]} was called beyond the {len(self._plan.calls)} planned calls")
        call = self._plan.calls[self._next]
        self._next += 1
        name = self._names[id(site)]
        groups = 1 if call.kind == "linear" else levels[..., 0, 0].numel()
        shape = (groups, levels[..., 0].numel() // groups, levels.shape[-1], other.shape[-1])
        if name != call.site or shape != (call.groups, call.rows, call.fan_in, call.fan_out):
            raise RuntimeError(
                f"the forward on Lava left its plan at call {call.index}: planned {call.site} "
                f"{(call.groups, call.rows, call.fan_in, call.fan_out)}, reached {name} {shape}"
            )
        parts = [levels.reshape(-1), (ids if ids is not None else torch.zeros(groups * call.rows)).reshape(-1)]
        if call.kind == "attention.qk":  # other: the keys [G, d, S]
            parts.append(other.reshape(groups, call.fan_in, -1)[..., call.keep :].transpose(1, 2).reshape(-1))
        elif call.kind == "attention.pv":  # other: the values [.., S, d]
            parts.append(other.reshape(groups, -1, call.fan_out)[:, call.keep :].reshape(-1))
        payload = torch.cat([p.detach().to(torch.int64).cpu() for p in parts]).numpy()
        total = self._counter.get_total()
        self._segments[call.index] = total - self._ops
        self._ops = total
        self._events.put(("call", call.index, payload))
        acc = self._replies.get()
        return torch.from_numpy(np.asarray(acc).astype(np.int64)).reshape(*levels.shape[:-1], call.fan_out)

    def _forward_end(self, module, args, kwargs, output) -> None:
        total = self._counter.get_total()
        tail = total - self._ops
        self._ops = total
        scopes = {}
        for scope in self._plan.scopes:
            counted = sum(sum(self._counter.records.get(alias, {}).values()) for alias in self._aliases[scope])
            scopes[scope] = counted - self._scopes.get(scope, 0)
            self._scopes[scope] = counted
        logits = output.logits
        self._events.put(("forward", self._forward, dict(
            last=float_words(logits[:, -1]), scopes=count_words([scopes[s] for s in self._plan.scopes]),
            tail=count_words([tail]),
        )))
        self._forward += 1

    # The Lava side (the process model's steps).

    def _expect(self, kind: str, index: int, what: str = ""):
        try:
            event = self._events.get(timeout=WORKER_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(
                f"the model's code did not reach {kind} {index}{what} within {WORKER_TIMEOUT_S:.0f} s"
            ) from None
        if event[0] == "error":
            raise RuntimeError("the model's code raised in DecodedForward:\n" + event[1])
        if event[:2] != (kind, index):
            raise RuntimeError(f"the forward on Lava left its plan: expected {kind} {index}, got {event[0]} {event[1]}")
        return event[2]

    def payload(self, call: SiteCall) -> np.ndarray:
        """The input of ``call``, once the model's code has reached it."""
        return self._expect("call", call.index, f" ({call.site})")

    def reply(self, acc: np.ndarray) -> None:
        """Hand the product of the call in progress back to the model's code."""
        self._replies.put(np.array(acc))

    def generated(self) -> np.ndarray:
        """The tokens the generation produced ``[B * forwards]``, once ``generate`` returned."""
        return self._expect("done", 0)

    def readout(self, forward: int, traces: dict[int, np.ndarray]) -> np.ndarray:
        """The readout message of ``forward`` (see :attr:`ModelPlan.result_width`), once it is done."""
        done = self._expect("forward", forward)
        calls = [c for c in self._plan.calls if c.forward == forward]
        per_call = [np.concatenate([count_words([self._segments[c.index]]), traces[c.index]]) for c in calls]
        return np.concatenate([done["last"], done["scopes"], *per_call, done["tail"]])

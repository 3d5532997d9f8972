"""SIGINT held back across a block and delivered after it; a KeyboardInterrupt that Python drops
in a finalizer is sent again. Real signals, sent to this process (pytest turns an escaped
KeyboardInterrupt into the end of the session, so each one here is caught)."""

import gc
import os
import signal
import time

import pytest

from spikemllm_sj.interrupts import interrupts_kept, sigint_held


def test_sigint_in_a_held_block_is_delivered_when_it_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_held():
            signal.raise_signal(signal.SIGINT)
            done.append("the block ran on")
    assert done == ["the block ran on"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_held_block_without_sigint_changes_nothing():
    with sigint_held():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_sigint_is_delivered_at_once_and_only_once():
    with sigint_held():
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    # Leaving the block delivered nothing more, and restored the handler.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_process_forked_in_a_held_block_ignores_sigint():
    with sigint_held():
        pid = os.fork()
        if pid == 0:  # the child: SIGINT must neither raise nor kill it
            try:
                signal.raise_signal(signal.SIGINT)
                time.sleep(0.05)  # a handler would have run by now
                os._exit(0)
            except BaseException:
                os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class _InterruptedFinalizer:
    def __del__(self):
        raise KeyboardInterrupt  # what SIGINT does when it lands in a finalizer


def test_a_keyboard_interrupt_dropped_in_a_finalizer_is_sent_again(capfd):
    with pytest.raises(KeyboardInterrupt):
        with interrupts_kept():
            _InterruptedFinalizer()  # dropped at once: Python prints and drops its exception
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
    assert "Exception ignored" not in capfd.readouterr().err


def test_other_dropped_exceptions_still_reach_the_previous_hook(monkeypatch):
    seen = []
    monkeypatch.setattr("sys.unraisablehook", seen.append)

    class Failing:
        def __del__(self):
            raise ValueError("in a finalizer")

    with interrupts_kept():
        Failing()
        gc.collect()
    assert [type(u.exc_value) for u in seen] == [ValueError]

"""The ``spikemllm`` commands (:mod:`.cli`), one module each, and what they share
(:mod:`.common`, :mod:`.options`); :mod:`.example` is the shared part of ``examples/``."""

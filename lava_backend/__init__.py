"""Lava backend of spikemllm-sj (installed as ``spikemllm_sj.lava_backend``): it will hold the Lava
processes and process models that run converted SpikingJelly layers on Intel's Lava (lava-nc
0.10.0). lava-nc 0.10.0 does not import on Python 3.11 as released, so importing this package
first makes it importable (:func:`ensure_lava_importable`): import it before anything from
``lava``.
"""

from ._compat import ensure_lava_importable

__all__ = ["ensure_lava_importable"]

ensure_lava_importable()

"""ANN-to-SNN conversion of MLLMs: the SpikingJelly recipe (:mod:`.recipe`, ``convert``), the
spike-driven sites it swaps in (:mod:`.sites`, :mod:`.linear`, :mod:`.attention`), the model
adapters, calibration and save/load."""

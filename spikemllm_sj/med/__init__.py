"""MED analysis and the MSTS scheduler: per-modality time steps chosen from measurements.

``analyze(model, batches)`` measures, on calibration batches, how each modality's hidden states
evolve through the decoder layers (MED) and how much each modality alone loses at each candidate
step count; ``MEDStudy.schedule(budget=...)`` picks the steps per modality (optionally per layer
group) and ``explain`` says why; ``plots`` draws the figures; ``spikemllm med`` runs it all.
"""

from spikemllm_sj.med.analysis import MEDConfig, MEDStudy, SensitivityEntry, analyze, compare, scheduled_config
from spikemllm_sj.med.schedule import Candidate, Schedule, SensitivityTable, explain, schedule
from spikemllm_sj.med.steps import ALL, VISION, model_sections, plan_config, steps_applied

__all__ = [
    "ALL",
    "VISION",
    "Candidate",
    "MEDConfig",
    "MEDStudy",
    "Schedule",
    "SensitivityEntry",
    "SensitivityTable",
    "analyze",
    "compare",
    "explain",
    "model_sections",
    "schedule",
    "scheduled_config",
    "plan_config",
    "steps_applied",
]

"""The :class:`~spikemllm_sj.lava_backend.spike_synapse.process.SpikeSynapse` Lava Process and its ProcessModels.

Lava's compiler executes every ``.py`` file of this folder to find ProcessModels: keep only the
Process and its models here, and import them absolutely (the files also run as bare modules).
"""

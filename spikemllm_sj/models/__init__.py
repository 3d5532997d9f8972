"""The model zoo: loading checkpoints by name (:mod:`.loading`), their inputs and outputs
(:mod:`.inputs`), the tiny offline families (:mod:`.tiny`), the real-weights caches
(:mod:`.real_weights`: SmolLM2-135M-Instruct, Gemma-3-270M) and the trained easy-VQA LLaVA (:mod:`.easyvqa_llava`)."""

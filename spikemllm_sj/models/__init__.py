"""The model zoo: loading checkpoints by name (:mod:`.loading`), their inputs and outputs
(:mod:`.inputs`), the tiny offline families (:mod:`.tiny`), the real-weights cache
(:mod:`.real_weights`) and the trained easy-VQA LLaVA (:mod:`.easyvqa_llava`)."""

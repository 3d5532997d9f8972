"""Integrations with other tools: lmms-eval (:mod:`.lmms_eval`), transformers' quantizer API
(:mod:`.transformers_quantizer`: ``save_pretrained`` / ``from_pretrained`` of converted models)."""

"""Integrations with other tools: lmms-eval (:mod:`.lmms_eval`)."""

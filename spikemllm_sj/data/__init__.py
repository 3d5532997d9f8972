"""Data: easy-VQA (:mod:`.easyvqa`) and JSONL question records (:mod:`.records`)."""

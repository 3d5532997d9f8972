"""The easy-VQA task's functions: spikemllm_sj.integrations.easyvqa_task (image, prompt, scoring)."""

from spikemllm_sj.integrations.easyvqa_task import doc_to_text, doc_to_visual, process_results

__all__ = ["doc_to_visual", "doc_to_text", "process_results"]

"""Qwen2.5-VL made spike-driven: one image and one question, the float and the spiking answers.

Qwen2.5-VL keeps Qwen2-VL's patch grid and 2x2 merge but its ViT attends within windows in most
blocks and over the whole image in a few (``fullatt_block_indexes``); the spike-driven attention
covers both, with the image time steps Tv = 3, and the language model gives text tokens Tt = 4
(MSTS). The paper's Qwen models are Qwen2-VL; Qwen2.5-VL-7B-Instruct is its successor.

    python examples/qwen2_5_vl.py                                      # tiny config, offline
    python examples/qwen2_5_vl.py --model Qwen/Qwen2.5-VL-7B-Instruct  # real weights (network or cache)
"""

import sys

from spikemllm_sj.commands.example import answer_three_ways, example_parser, print_run


def main(argv=None) -> int:
    parser = example_parser(__doc__, tiny="tiny-qwen2.5-vl", checkpoint="Qwen/Qwen2.5-VL-7B-Instruct")
    args = parser.parse_args(argv)
    result = answer_three_ways(args)

    # Family-specific: windowed and full-attention blocks of the vision tower.
    vision = result.model.config.vision_config
    full = list(vision.fullatt_block_indexes)
    windowed = [i for i in range(vision.depth) if i not in full]
    t, h, w = result.batch["image_grid_thw"][0].tolist()
    print(f"Qwen2.5-VL vision: {t}x{h}x{w} patch grid; blocks {windowed} attend in {vision.window_size} px windows, "
          f"blocks {full} over the whole image")
    return print_run(result, args.question)


if __name__ == "__main__":
    sys.exit(main())

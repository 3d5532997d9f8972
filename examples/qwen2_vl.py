"""Qwen2-VL made spike-driven: one image and one question, the float and the spiking answers.

Qwen2-VL cuts the image into patches (14 px; 4 px in the tiny config) on a (t, h, w) grid,
encodes them with its ViT and merges each 2x2 block of patches into one language-model token.
After conversion the vision tower and the merger run on image time steps (Tv = 3), and in the
language model every image token gets Tv steps and every text token Tt = 4 (MSTS). The paper
evaluated Qwen2VL-7B and Qwen2VL-72B.

    python examples/qwen2_vl.py                                    # tiny config, offline
    python examples/qwen2_vl.py --model Qwen/Qwen2-VL-7B-Instruct  # real weights (network or cache)
"""

import sys

from spikemllm_sj.commands.example import answer_three_ways, example_parser, print_run


def main(argv=None) -> int:
    parser = example_parser(__doc__, tiny="tiny-qwen2-vl", checkpoint="Qwen/Qwen2-VL-7B-Instruct (the paper's Qwen2VL-7B)")
    args = parser.parse_args(argv)
    result = answer_three_ways(args)

    # Family-specific: the patch grid and the 2x2 merge that make the image tokens.
    t, h, w = result.batch["image_grid_thw"][0].tolist()
    merge = result.model.config.vision_config.spatial_merge_size
    print(f"Qwen2-VL vision: {t}x{h}x{w} patch grid, merged {merge}x{merge} -> {t * h * w // merge**2} image tokens")
    return print_run(result, args.question)


if __name__ == "__main__":
    sys.exit(main())

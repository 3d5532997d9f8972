"""InternVL made spike-driven: one image and one question, the float and the spiking answers.

InternVL encodes each image tile with InternViT, folds 2x2 neighbouring features into one by
pixel shuffle (``downsample_ratio`` 0.5) and projects them with an MLP into the language model
(Qwen2 in InternVL3). After conversion InternViT and the projector run on image time steps
(Tv = 3) and the language model gives text tokens Tt = 4 (MSTS). The paper evaluated
InternVL2-8B (OpenGVLab/InternVL2-8B, remote code that transformers' InternVL class does not
load); the nearest transformers-native checkpoint is OpenGVLab/InternVL3-8B-hf.

    python examples/internvl.py                                     # tiny config, offline
    python examples/internvl.py --model OpenGVLab/InternVL3-8B-hf   # real weights (network or cache)
"""

import sys

from spikemllm_sj.commands.example import answer_three_ways, example_parser, print_run


def main(argv=None) -> int:
    parser = example_parser(
        __doc__, tiny="tiny-internvl", checkpoint="OpenGVLab/InternVL3-8B-hf (nearest to the paper's InternVL2-8B)"
    )
    args = parser.parse_args(argv)
    result = answer_three_ways(args)

    # Family-specific: tiles and pixel shuffle.
    tiles, _, height, width = result.batch["pixel_values"].shape
    config = result.model.config
    print(f"InternVL vision: {tiles} tile(s) of {height}x{width} px, pixel shuffle x{config.downsample_ratio} "
          f"-> {config.image_seq_length} image tokens per tile")
    return print_run(result, args.question)


if __name__ == "__main__":
    sys.exit(main())

"""LLaVA-OneVision made spike-driven: one image and one question, the float and the spiking answers.

LLaVA-OneVision ("anyres") resizes the image to the best of its grid resolutions, cuts it into
tiles the size of SigLIP's input, and encodes the whole image (downscaled) and every tile; after
the projector a learned ``image_newline`` vector ends each row of tile features. After conversion
SigLIP and the projector run on image time steps (Tv = 3) and Qwen2 gives text tokens Tt = 4
(MSTS). The paper does not report LLaVA-OneVision; llava-hf/llava-onevision-qwen2-7b-ov-hf is the
public 7B checkpoint.

    python examples/llava_onevision.py                                                  # tiny, offline
    python examples/llava_onevision.py --model llava-hf/llava-onevision-qwen2-7b-ov-hf  # real weights
"""

import sys

from spikemllm_sj.commands.example import answer_three_ways, example_parser, print_run


def main(argv=None) -> int:
    parser = example_parser(__doc__, tiny="tiny-llava-onevision", checkpoint="llava-hf/llava-onevision-qwen2-7b-ov-hf")
    args = parser.parse_args(argv)
    result = answer_three_ways(args)

    # Family-specific: the anyres tiles behind the image tokens.
    _, views, _, height, width = result.batch["pixel_values"].shape
    size = result.batch["image_sizes"][0].tolist()
    print(f"LLaVA-OneVision vision: image {size[0]}x{size[1]} -> the whole image + {views - 1} anyres tiles of "
          f"{height}x{width} px -> {result.visual_tokens} image tokens (row-end newlines included)")
    return print_run(result, args.question)


if __name__ == "__main__":
    sys.exit(main())

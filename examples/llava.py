"""LLaVA (1.5) made spike-driven: one image and one question, the float and the spiking answers.

LLaVA encodes the image with CLIP's ViT, takes the patch features of its second-to-last layer
(the CLS token dropped: ``vision_feature_select_strategy="default"``) and maps them with a
two-layer MLP projector into Llama's embedding space. After conversion CLIP and the projector run
on image time steps (Tv = 3) and Llama gives text tokens Tt = 4 (MSTS). The paper does not report
LLaVA; llava-hf/llava-1.5-7b-hf is the public checkpoint of this family.

    python examples/llava.py                                       # tiny config, offline
    python examples/llava.py --model llava-hf/llava-1.5-7b-hf      # real weights (network or cache)
"""

import sys

from spikemllm_sj.commands.example import answer_three_ways, example_parser, print_run


def main(argv=None) -> int:
    parser = example_parser(__doc__, tiny="tiny-llava", checkpoint="llava-hf/llava-1.5-7b-hf")
    args = parser.parse_args(argv)
    result = answer_three_ways(args)

    # Family-specific: which CLIP layer and which of its tokens feed the projector.
    config = result.model.config
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    print(f"LLaVA vision: {side}x{side} CLIP patches of {vision.patch_size} px from layer {config.vision_feature_layer} "
          f"({config.vision_feature_select_strategy}: CLS dropped) -> MLP projector -> {result.visual_tokens} image tokens")
    return print_run(result, args.question)


if __name__ == "__main__":
    sys.exit(main())

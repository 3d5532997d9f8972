"""Draw the repository's small images with PIL (no downloads); their outputs are committed.

Run from the repository root: ``python examples/assets/draw_images.py``. It writes

* ``examples/assets/shapes.png``: a red circle and a blue square on white, the image of the
  examples (question: "What colour is the circle?");
* ``data/eval_sample/*.png`` and ``data/eval_sample/sample.jsonl``: one shape per image and a
  question about its colour or its shape, the records of ``spikemllm eval``'s sample.
"""

import json
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 210), "yellow": (235, 200, 20)}
# (shape, colour, asked about): the sample's records, in order.
SAMPLE = [
    ("circle", "red", "colour"),
    ("square", "green", "shape"),
    ("triangle", "blue", "colour"),
    ("circle", "yellow", "shape"),
    ("square", "red", "colour"),
    ("triangle", "green", "shape"),
]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: str) -> None:
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        x0, y0, x1, y1 = box
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def main(root: Path = ROOT) -> None:
    """Write the files under ``root`` (the repository by default)."""
    image = Image.new("RGB", (128, 96), "white")
    draw = ImageDraw.Draw(image)
    draw_shape(draw, "circle", (10, 22, 60, 72), "red")
    draw_shape(draw, "square", (72, 26, 116, 70), "blue")
    (root / "examples" / "assets").mkdir(parents=True, exist_ok=True)
    image.save(root / "examples" / "assets" / "shapes.png", optimize=True)

    folder = root / "data" / "eval_sample"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for shape, colour, asked in SAMPLE:
        image = Image.new("RGB", (64, 64), "white")
        draw_shape(ImageDraw.Draw(image), shape, (12, 12, 52, 52), colour)
        name = f"{colour}_{shape}.png"
        image.save(folder / name, optimize=True)
        question = "What colour is the shape?" if asked == "colour" else "What shape is this?"
        answer = colour if asked == "colour" else shape
        lines.append(json.dumps({"image": name, "question": question, "answer": answer}))
    (folder / "sample.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

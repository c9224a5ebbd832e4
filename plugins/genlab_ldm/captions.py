"""Training captions for digits: the label plus attributes measured on each image, in several phrasings.

Prompts then carry more than a class id ("a thick slanted seven"), and the eval can check the
attributes of a generated digit with the same measurements it was captioned with.

Measurements (on pixels > 0.5 of a 28x28 digit):
- thickness: ink area over half the boundary length, i.e. the mean stroke width in pixels;
- slant: the shear of the ink's second moments, -mu11 / mu02 (> 0: the top leans right).
Each is cut into three bands at the training data's tertiles, saved with the model.
"""

from __future__ import annotations

import random

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESS_WORDS = ("thin", "", "thick")  # "" = the middle band: not worth a word
SLANT_WORDS = ("upright", "", "slanted")  # lowest band leans least to the right


def measure(images) -> dict[str, np.ndarray]:
    """Stroke thickness and slant of uint8 or float images [N, 1, H, W]."""
    x = np.asarray(images, dtype=np.float32)
    if x.max() > 1.5:
        x = x / 255.0
    x = x[:, 0]
    ink = x > 0.5
    area = ink.sum((1, 2))
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    interior = (padded[:, 1:-1, 1:-1] & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1]
                & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:])
    boundary = (ink & ~interior).sum((1, 2))
    thickness = 2 * area / np.maximum(boundary, 1)
    ys, xs = np.mgrid[0 : x.shape[1], 0 : x.shape[2]]
    mass = np.maximum(x.sum((1, 2)), 1e-6)
    cx = (x * xs).sum((1, 2)) / mass
    cy = (x * ys).sum((1, 2)) / mass
    mu11 = (x * (xs - cx[:, None, None]) * (ys - cy[:, None, None])).sum((1, 2)) / mass
    mu02 = np.maximum((x * (ys - cy[:, None, None]) ** 2).sum((1, 2)) / mass, 1e-6)
    return {"thickness": thickness, "slant": -mu11 / mu02}


def band_edges(measurements: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """Tertile edges of each attribute on the training data."""
    return {name: np.percentile(values, [100 / 3, 200 / 3]).round(4).tolist() for name, values in measurements.items()}


def bands(measurements: dict[str, np.ndarray], edges: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """0, 1 or 2 per image and attribute."""
    return {name: np.digitize(values, edges[name]) for name, values in measurements.items()}


def caption(label: int, thickness_band: int, slant_band: int, rng: random.Random) -> str:
    """One phrasing, chosen by ``rng``, of a digit and its attributes: "7", "seven", "a thick slanted 7"..."""
    digit = rng.choice((str(label), DIGIT_WORDS[label]))
    words = [w for w in (THICKNESS_WORDS[thickness_band], SLANT_WORDS[slant_band]) if w]
    style = rng.random()
    if style < 0.25 or not words:
        return digit  # the bare digit
    keep = [w for w in words if rng.random() < 0.8] or words[:1]
    rng.shuffle(keep)
    article = "an" if keep[0][0] in "aeiou" else "a"
    return " ".join([article, *keep, digit]) if style < 0.85 else f"{digit}, {' and '.join(keep)}"


def parse_prompt(prompt: str) -> dict:
    """What a prompt asks for: {"digit": int | None, "thickness": band | None, "slant": band | None}."""
    tokens = prompt.lower().replace(",", " ").split()
    asked = {"digit": None, "thickness": None, "slant": None}
    for token in tokens:
        if token.isdigit() and len(token) == 1:
            asked["digit"] = int(token)
        elif token in DIGIT_WORDS:
            asked["digit"] = DIGIT_WORDS.index(token)
        elif token in THICKNESS_WORDS and token:
            asked["thickness"] = THICKNESS_WORDS.index(token)
        elif token in SLANT_WORDS and token:
            asked["slant"] = SLANT_WORDS.index(token)
    return asked


def vocabulary() -> list[str]:
    """Every word a training caption can contain."""
    words = {str(d) for d in range(10)} | set(DIGIT_WORDS) | {w for w in THICKNESS_WORDS + SLANT_WORDS if w}
    return sorted(words | {"a", "an", "and", ","})

"""Small helpers to turn image tensors into things people look at."""

from __future__ import annotations

import math


def to_pil_list(images, scale: int = 1):
    """float [N, C, H, W] in [0, 1] -> PIL images, optionally enlarged with nearest-neighbour pixels."""
    from PIL import Image

    from .datasets import to_uint8

    arrays = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arrays:
        img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        out.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img)
    return out


def grid(images, nrow: int | None = None, padding: int = 2, scale: int = 1):
    """A PIL image of a grid of float images [N, C, H, W] in [0, 1]."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    tensor = make_grid(images.clamp(0, 1).cpu(), nrow=nrow, padding=padding, pad_value=1.0)
    return to_pil_list(tensor.unsqueeze(0), scale=scale)[0]

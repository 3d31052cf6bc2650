"""Image transforms that are not a model's own: Chinese CLIP's protocol squashes to a square."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from torchvision.transforms import Compose


def _to_rgb(img: Image.Image) -> Image.Image:
    return img.convert("RGB")


def squash_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Compose:
    """Resize the whole image to size × size (bicubic, aspect ratio not kept), no crop.

    This is Chinese CLIP's and ELEVATER's evaluation preprocessing; a center crop would drop
    the image borders (and, on KITTI, the cars at the edges).
    """
    # imported here: torchvision pulls in torch._dynamo (over a second), and a fully cached run needs
    # no transform at all
    from torchvision import transforms as T

    return T.Compose([
        T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std)),
    ])

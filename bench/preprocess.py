"""Image transforms that are not a model's own, by name (a model YAML's `preprocess:`, a protocol's
`image_transform:`): Chinese CLIP squashes to a square; ELEVATER resizes the short side and centre-crops."""

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

    This is Chinese CLIP's evaluation preprocessing (cn_clip.clip.utils.image_transform), and ELEVATER's
    for KITTI only (its dataset YAML sets CENTER_CROP false): ELEVATER otherwise resizes and centre-crops.
    A centre crop drops the image borders (and, on KITTI, the cars at the edges)."""
    # imported here: torchvision pulls in torch._dynamo (over a second), and a fully cached run needs
    # no transform at all
    from torchvision import transforms as T

    return T.Compose([
        T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std)),
    ])



def resize_crop_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Compose:
    """ELEVATER's zero-shot preprocessing (vision_benchmark/evaluation/feature.py construct_dataloader with
    DATASET.CENTER_CROP true, its default): the short side resized to `size` (bicubic), a size × size centre
    crop, ToTensor, Normalize. Images are RGB before the resize, as its loaders give them."""
    from torchvision import transforms as T

    return T.Compose([
        _to_rgb,
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std)),
    ])


# transform name -> builder(size, mean, std); "model" (the backend's own transform) is not in here.
# "squash" is the name protocols use; "cn-clip" is the same transform under the name model YAMLs use.
TRANSFORMS = {"cn-clip": squash_transform, "squash": squash_transform, "elevater": resize_crop_transform}


def build_transform(kind: str, size: int, mean: Sequence[float], std: Sequence[float]) -> Compose:
    """The named transform at the model's input size and normalisation."""
    return TRANSFORMS[kind](int(size), mean, std)

class PilToUint8:
    """The PIL steps of a transform, then the image as a uint8 CHW tensor (what ToTensor starts from)."""

    def __init__(self, head):
        self.head = head

    def __call__(self, img: Image.Image):
        import numpy as np
        import torch

        img = self.head(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


class BatchToFloat:
    """ToTensor's scaling and Normalize, on a whole uint8 batch: the same elementwise operations in the same
    order as per image, so the result is bit-identical."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __call__(self, batch, pin: bool = False):
        """`pin`: into page-locked memory, so that the copy to a GPU can run while the GPU computes."""
        import torch

        x = torch.empty(batch.shape, dtype=torch.float32, device=batch.device, pin_memory=pin)
        # on a GPU by a tensor: CUDA divides by a Python scalar as a multiply by its inverse, which differs
        # from ToTensor's division in the last bit for about half the pixel values
        x.copy_(batch).div_(255 if x.device.type == "cpu" else torch.full((), 255.0, device=x.device))
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x.sub_(mean).div_(std)


def tensor_tail(transform) -> tuple[list, object] | None:
    """(the steps before, the Normalize) of a torchvision Compose that ends in ToTensor + Normalize; None
    for any other transform. Those two steps can then run once per batch instead of per image."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if not isinstance(transform, T.Compose) or len(steps) < 2:
        return None
    to_tensor, norm = steps[-2], steps[-1]
    # open_clip's MaybeToTensor is a ToTensor that lets tensors through; ours get PIL images only
    if not isinstance(to_tensor, T.ToTensor) or type(norm) is not T.Normalize or norm.inplace:
        return None
    return steps[:-2], norm


def split_for_workers(transform) -> tuple[object, BatchToFloat | None]:
    """(per-image part, per-batch part) of a transform. A torchvision Compose that ends in ToTensor +
    Normalize is split so that DataLoader workers decode and resize only, and hand over uint8 tensors (a
    quarter of the bytes); the float conversion and normalisation run once per batch in the main process,
    on the CPU as ToTensor does. Any other transform runs whole in the workers."""
    from torchvision import transforms as T

    tail = tensor_tail(transform)
    if tail is None:
        return transform, None
    head, norm = tail
    return PilToUint8(T.Compose(head)), BatchToFloat(norm.mean, norm.std)

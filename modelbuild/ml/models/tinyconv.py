"""A tiny image classifier: the project's non-LLM example model.

Three 3x3 convolutions (the last two with stride 2), global average pooling
and a linear head. It takes an NCHW float image (1x3xHxW, any H and W of at
least 4) and returns class logits. About 25k parameters at the default width,
so exporting, converting and compressing it take seconds.

Example::

    >>> import torch
    >>> from modelbuild.ml.models.tinyconv import make
    >>> make(seed=0)(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])

Used by ``recipes/vision.toml`` as ``module = "modelbuild.ml.models.tinyconv:make"``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyConv", "make"]


class TinyConv(nn.Module):
    """conv(3->w) -> conv(w->2w, /2) -> conv(2w->4w, /2) -> mean -> linear(4w->classes)."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1, stride=2)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(image))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        # mean over H and W rather than AdaptiveAvgPool2d: it exports to one
        # aten op for any input size, which keeps dynamic H/W simple downstream.
        x = x.mean(dim=(2, 3))
        return self.head(x)


def make(seed: int = 0, width: int = 16, num_classes: int = 10) -> TinyConv:
    """Build a :class:`TinyConv` with weights drawn from ``seed`` (eval mode).

    The global RNG state is left as it was, so calling ``make`` does not change
    what other seeded code draws.
    """
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = TinyConv(width=width, num_classes=num_classes)
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()

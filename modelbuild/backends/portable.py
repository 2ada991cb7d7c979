"""Portable: delegate nothing; every op runs on ExecuTorch's portable CPU kernels."""

from __future__ import annotations

from .base import Backend

__all__ = ["Portable"]


class Portable(Backend):
    name = "portable"
    description = "no delegate, ExecuTorch's portable CPU kernels"

"""Step 3 of EoS-FM: normalise every feature map before fusion.

Each (specialist, route) stream gets its own normaliser per pyramid level, so
that the statistics of, say, RGB and IR-R-G inputs to one specialist are not
blended, and no loud specialist dominates the fusion. The EoS-FM paper's
ablation compares the three kinds kept here.
"""

from __future__ import annotations

from torch import nn

NORM_KINDS = ("batch", "layer", "none")


def make_feature_norm(kind: str, channels: int) -> nn.Module:
    """Build a parameter-free normaliser for a ``(B, channels, H, W)`` map.

    Args:
        kind: ``"batch"`` uses batch statistics in training and running
            statistics in eval. ``"layer"`` normalises each sample over
            channels and space. Neither has a scale or bias. ``"none"``
            returns the map unchanged.
        channels: Channels of the feature map.

    Raises:
        ValueError: ``kind`` is not one of :data:`NORM_KINDS`.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "layer":
        return nn.GroupNorm(1, channels, affine=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown feature normalisation {kind!r}; use one of {NORM_KINDS}")


class StreamNorms(nn.Module):
    """One normaliser per stream and pyramid level.

    Args:
        kind: One of :data:`NORM_KINDS`.
        stream_channels: For each stream, the width of each pyramid level.
    """

    def __init__(self, kind: str, stream_channels: list[list[int]]) -> None:
        super().__init__()
        self.kind = kind
        self.norms = nn.ModuleList(
            nn.ModuleList(make_feature_norm(kind, c) for c in channels) for channels in stream_channels
        )

    def forward(self, stream: int, features: list) -> list:
        """Normalise the pyramid of one stream."""
        return [norm(f) for norm, f in zip(self.norms[stream], features)]

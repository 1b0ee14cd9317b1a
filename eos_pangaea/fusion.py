"""Step 5 of EoS-FM: fuse the selected streams into one feature pyramid.

Per pyramid level, a single 1x1 convolution maps the concatenated feature maps
of every stream to the output width. Streams of specialists that selection
dropped are not computed. Instead of feeding zeros for them, the convolution
uses only the weight columns of the streams that are present, which gives the
same result as the full convolution with zeros in the dropped slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Fusion(nn.Module):
    """One 1x1 convolution per pyramid level over all streams.

    Args:
        stream_channels: For each stream, the width of each pyramid level.
        out_channels: Output width of each pyramid level.
    """

    def __init__(self, stream_channels: Sequence[Sequence[int]], out_channels: Sequence[int]) -> None:
        super().__init__()
        levels = len(out_channels)
        self.out_channels = list(out_channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(sum(channels[level] for channels in stream_channels), out_channels[level], kernel_size=1)
            for level in range(levels)
        )
        # Offset of each stream's first input channel, per level.
        self.offsets = [
            [sum(c[level] for c in stream_channels[:s]) for s in range(len(stream_channels) + 1)]
            for level in range(levels)
        ]
        self.stream_count = len(stream_channels)
        self._column_cache: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}

    def forward(self, streams: Sequence[int], features: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        """Fuse the pyramids of the given streams.

        Args:
            streams: Indices of the streams present, ascending.
            features: For each present stream, its pyramid.

        Returns:
            One tensor per level of shape ``(B, out_channels[level], H, W)``.
        """
        outputs = []
        for level, conv in enumerate(self.convs):
            maps = torch.cat([pyramid[level] for pyramid in features], dim=1)
            weight = conv.weight
            if len(streams) < self.stream_count:
                weight = weight.index_select(1, self._columns(level, tuple(streams), weight.device))
            outputs.append(F.conv2d(maps, weight.to(maps.dtype), conv.bias.to(maps.dtype)))
        return outputs

    def _columns(self, level: int, streams: tuple[int, ...], device: torch.device) -> torch.Tensor:
        key = (level, streams)
        columns = self._column_cache.get(key)
        if columns is None or columns.device != device:
            if len(self._column_cache) >= 256:
                self._column_cache.clear()  # top-k sets change rarely after warm-up
            offsets = self.offsets[level]
            columns = torch.cat([torch.arange(offsets[s], offsets[s + 1]) for s in streams]).to(device)
            self._column_cache[key] = columns
        return columns

"""The EoS-FM ensemble: adapt bands, run specialists, normalise, select, fuse.

EoS-FM (Adorni et al., arXiv 2511.21523) is an ensemble of small frozen
specialists. For one input, :class:`EoSFM` runs these steps:

1. **adapt bands** (:mod:`eos_pangaea.bands`): each specialist receives one
   stream per matching route;
2. **select** (:mod:`eos_pangaea.selection`): the specialists to run are
   decided from the selection weights before anything runs;
3. **run specialists** (:mod:`eos_pangaea.specialists`): frozen, no gradient;
4. **normalise** (:mod:`eos_pangaea.normalization`): per stream and level;
5. **weight and fuse** (:mod:`eos_pangaea.selection`,
   :mod:`eos_pangaea.fusion`): each map times its specialist's weight, then
   one 1x1 convolution per level.

Only the selection weights, the normalisation statistics and the fusion are
trained; the specialists stay bit-identical.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eos_pangaea.bands import BandAdapter, Stream, plan_streams
from eos_pangaea.fusion import Fusion
from eos_pangaea.normalization import StreamNorms
from eos_pangaea.selection import SpecialistSelection
from eos_pangaea.specialists import Specialist, SpecialistSpec

logger = logging.getLogger(__name__)


class EoSFM(nn.Module):
    """EoS-FM ensemble of frozen specialists with learnable selection and fusion.

    Args:
        specialists: Built specialists, or specs to build with random weights.
        input_bands: Band labels of each input modality, in channel order,
            for example ``{"optical": ["B2", "B3", "B4"], "sar": ["VV", "VH"]}``.
        dataset: Dataset name, for band labels whose meaning depends on the
            dataset (see ``data/band_roles.yaml``).
        band_labels: Extra ``label -> role`` entries for the input bands.
        missing_bands: ``"skip"`` (default) or ``"zero"`` for routes whose
            bands are only partly present.
        norm: Feature normalisation, ``"batch"`` (default), ``"layer"`` or ``"none"``.
        top_k: Number of specialists to keep; ``None`` keeps all.
        warmup_steps: Training forward passes that run every specialist
            before the top-k cut starts (see :mod:`eos_pangaea.selection`).
        out_channels: Output width of each level; by default the first
            specialist's widths times ``width_multiplier``.
        width_multiplier: Multiplier of the default output widths.
        batch_streams: Run all streams of one specialist as one batched call.
        channels_last: Run the specialists in channels-last memory format.

    Raises:
        ValueError: No specialist can use the input, specialists disagree on
            the number of levels or their strides, or an option is invalid.
    """

    def __init__(
        self,
        specialists: Sequence[Specialist | SpecialistSpec],
        input_bands: Mapping[str, Sequence[str]],
        *,
        dataset: str | None = None,
        band_labels: Mapping[str, str] | None = None,
        missing_bands: str = "skip",
        norm: str = "batch",
        top_k: int | None = None,
        warmup_steps: int = 0,
        out_channels: Sequence[int] | None = None,
        width_multiplier: float = 1.0,
        batch_streams: bool = True,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if not specialists:
            raise ValueError("An EoS-FM ensemble needs at least one specialist")
        built = [s if isinstance(s, Specialist) else Specialist(s) for s in specialists]
        _check_same_pyramid(built)
        self.specialists = nn.ModuleList(built)
        self.input_bands = {m: list(b) for m, b in input_bands.items()}
        self.dataset = dataset
        self.batch_streams = batch_streams
        self.channels_last = channels_last
        if channels_last:
            self.specialists.to(memory_format=torch.channels_last)

        self.streams: list[Stream] = plan_streams(
            [(s.name, s.spec.bands) for s in built],
            self.input_bands,
            dataset=dataset,
            band_labels=band_labels,
            missing_bands=missing_bands,
        )
        self.adapter = BandAdapter(self.streams, self.input_bands)
        stream_channels = [built[s.specialist].channels for s in self.streams]
        self.norms = StreamNorms(norm, stream_channels)

        eligible = [any(s.specialist == i for s in self.streams) for i in range(len(built))]
        self.selection = SpecialistSelection([s.name for s in built], eligible, top_k, warmup_steps)

        if out_channels is None:
            out_channels = [int(round(c * width_multiplier)) for c in built[0].channels]
        self.fusion = Fusion(stream_channels, out_channels)
        self._streams_of = {i: [j for j, s in enumerate(self.streams) if s.specialist == i] for i in range(len(built))}
        logger.info("EoS-FM: %d specialists, %d streams, output widths %s",
                    len(built), len(self.streams), list(out_channels))

    @property
    def out_channels(self) -> list[int]:
        """Width of each output level."""
        return list(self.fusion.out_channels)

    @property
    def reductions(self) -> list[int]:
        """Stride of each output level."""
        return self.specialists[0].reductions

    def forward(self, x: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Compute the fused feature pyramid.

        Args:
            x: ``modality -> (B, C, H, W)`` tensor, channels in the order of
                ``input_bands``.

        Returns:
            One tensor per level, ``(B, out_channels[i], H / stride_i, W / stride_i)``.
        """
        selected = self.selection.selected()
        if self.training:
            self.selection.record_step()
        stacked = self.adapter.stack_input(x)

        stream_ids: list[int] = []
        pyramids: list[list[torch.Tensor]] = []
        for specialist in selected:
            ids = self._streams_of[specialist]
            for stream, features in zip(ids, self.run_specialist(specialist, ids, stacked)):
                features = self.norms(stream, features)
                stream_ids.append(stream)
                pyramids.append(self.selection(specialist, features))

        pyramids = _match_sizes(pyramids)
        return self.fusion(stream_ids, pyramids)

    def run_specialist(self, specialist: int, stream_ids: Sequence[int], stacked: torch.Tensor) -> list[list[torch.Tensor]]:
        """Run one specialist on each of its streams and return one pyramid per stream."""
        inputs = [self.adapter.gather(stacked, stream) for stream in stream_ids]
        model = self.specialists[specialist]
        if self.channels_last:
            inputs = [i.contiguous(memory_format=torch.channels_last) for i in inputs]
        if not self.batch_streams or len(inputs) == 1:
            return [model(i) for i in inputs]
        batch = inputs[0].shape[0]
        levels = model(torch.cat(inputs, dim=0))
        return [[level[n * batch:(n + 1) * batch] for level in levels] for n in range(len(inputs))]

    def describe_streams(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """Return ``(specialist, route name, input labels)`` for every stream."""
        labels = {(m, i): label for m, bands in self.input_bands.items() for i, label in enumerate(bands)}
        return [
            (self.specialists[s.specialist].name, s.route.name,
             tuple("0" if src is None else labels[src] for src in s.sources))
            for s in self.streams
        ]


def _check_same_pyramid(specialists: Sequence[Specialist]) -> None:
    first = specialists[0]
    for other in specialists[1:]:
        if other.reductions != first.reductions:
            raise ValueError(
                f"Specialists {first.name!r} and {other.name!r} have different pyramid strides "
                f"{first.reductions} and {other.reductions}; all specialists must share them."
            )


def _match_sizes(pyramids: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Resize maps to the first stream's sizes where backbones round differently."""
    reference = [level.shape[-2:] for level in pyramids[0]]
    return [
        [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
         for f, size in zip(pyramid, reference)]
        for pyramid in pyramids
    ]

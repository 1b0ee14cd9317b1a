"""Step 2 of EoS-FM: the frozen specialists.

A specialist is a timm backbone built with ``features_only=True`` (by default
``convnextv2_atto``: 4 stages of widths 40/80/160/320 at strides 4/8/16/32)
that was trained on one dataset and band set. It is frozen for good: its
parameters never require gradients, it stays in eval mode whatever
``train()`` is called with, and it always runs under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import timm
import torch
from torch import nn

DEFAULT_BACKBONE = "convnextv2_atto"


@dataclass(frozen=True)
class SpecialistSpec:
    """Description of a specialist: its name, declared input bands and architecture.

    Attributes:
        name: Unique name, for example ``sen12ms-s2``.
        bands: Band labels the specialist was trained on, in channel order.
        backbone: timm model name.
        metadata: Other manifest fields (dataset, scaling, source, ...).
    """

    name: str
    bands: tuple[str, ...]
    backbone: str = DEFAULT_BACKBONE
    metadata: Mapping = field(default_factory=dict, compare=False, hash=False)

    @property
    def in_chans(self) -> int:
        """Number of input channels."""
        return len(self.bands)


class Specialist(nn.Module):
    """A frozen feature-pyramid backbone with its declared bands.

    Args:
        spec: What the specialist is.
        backbone: An already built ``features_only`` model; built from
            ``spec.backbone`` with random weights when omitted.
    """

    def __init__(self, spec: SpecialistSpec, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.spec = spec
        if backbone is None:
            backbone = timm.create_model(spec.backbone, pretrained=False, features_only=True, in_chans=spec.in_chans)
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.train(False)
        stem_chans = _stem_in_channels(self.backbone)
        if stem_chans is not None and stem_chans != spec.in_chans:
            raise ValueError(
                f"Specialist {spec.name!r} declares {spec.in_chans} bands {list(spec.bands)} but its "
                f"stem takes {stem_chans} channels; fix the band list or the weights."
            )

    @property
    def name(self) -> str:
        """The specialist's name."""
        return self.spec.name

    @property
    def channels(self) -> list[int]:
        """Width of each pyramid level."""
        return list(self.backbone.feature_info.channels())

    @property
    def reductions(self) -> list[int]:
        """Stride of each pyramid level."""
        return list(self.backbone.feature_info.reduction())

    def train(self, mode: bool = True) -> Specialist:
        """Keep the specialist in eval mode whatever ``mode`` is."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature pyramid of ``x`` without tracking gradients."""
        with torch.no_grad():
            return list(self.backbone(x))


def load_specialist_specs(names: Iterable[str] | None = None, manifest: str | None = None) -> list[SpecialistSpec]:
    """Return the specs of the specialists listed in a weights manifest.

    Args:
        names: Specialists to keep, in this order; all of them when omitted.
        manifest: Manifest YAML to read; the shipped ``weights_manifest.yaml``
            when omitted.

    Raises:
        ValueError: A requested name is not in the manifest, or the manifest
            breaks its schema (the message names the entry and field).
    """
    from eos_pangaea.weights.manifest import entries_by_name, load_manifest

    entries = entries_by_name(load_manifest(manifest), None if names is None else list(names))
    return [SpecialistSpec(e.name, tuple(e.bands), e.backbone, e.as_dict()) for e in entries]


def _stem_in_channels(backbone: nn.Module) -> int | None:
    """Return the input channels of the first convolution, if there is one."""
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def build_specialists(specs: Sequence[SpecialistSpec]) -> list[Specialist]:
    """Build randomly initialised specialists for the given specs."""
    return [Specialist(spec) for spec in specs]

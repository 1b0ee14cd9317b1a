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

import hashlib
import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eos_pangaea.bands import BandAdapter, Stream, plan_streams
from eos_pangaea.execution import ExecutionStrategy, folds_head, run_folded, run_selected
from eos_pangaea.execution import run_specialist as _run_specialist
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
        execution: How to run the specialists (see
            :mod:`eos_pangaea.execution`): an ``ExecutionStrategy``, a mapping
            of its fields, ``"plain"``, or ``"auto"`` for the default of the
            input's device. When ``None`` (default), ``batch_streams`` and
            ``channels_last`` decide.
        specialists_in_state_dict: Whether ``state_dict()`` contains the frozen
            specialists. When ``False`` it contains only the trained head
            (selection, normalisation statistics, fusion) plus the names and
            SHA-256 digests of the specialists. Loading such a state dict
            leaves the specialists as they are, and a strict load succeeds
            when the digests match.

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
        execution: ExecutionStrategy | str | Mapping[str, bool] | None = None,
        specialists_in_state_dict: bool = True,
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
        self.execution = None if execution is None else ExecutionStrategy.from_value(execution)
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
        self.specialists_in_state_dict = specialists_in_state_dict
        self._digest_cache: dict[int, tuple[tuple[int, ...], str]] = {}
        self.register_state_dict_post_hook(_drop_specialists_hook)
        self.register_load_state_dict_post_hook(_ignore_missing_specialists_hook)
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

        strategy = self.execution_strategy(stacked.device)
        if folds_head(self, strategy):
            return run_folded(self, selected, stacked, strategy)

        stream_ids: list[int] = []
        pyramids: list[list[torch.Tensor]] = []
        for specialist, stream, features in run_selected(self, selected, stacked, strategy):
            features = self.norms(stream, features)
            stream_ids.append(stream)
            pyramids.append(self.selection(specialist, features))

        pyramids = _match_sizes(pyramids)
        return self.fusion(stream_ids, pyramids)

    def run_specialist(self, specialist: int, stream_ids: Sequence[int], stacked: torch.Tensor) -> list[list[torch.Tensor]]:
        """Run one specialist on each of its streams and return one pyramid per stream."""
        return _run_specialist(self, specialist, stream_ids, stacked, self.execution_strategy(stacked.device))

    def execution_strategy(self, device: torch.device) -> ExecutionStrategy:
        """Return how the specialists run on ``device`` (see :mod:`eos_pangaea.execution`)."""
        if self.execution == "auto":
            return ExecutionStrategy.for_device(device)
        if self.execution is None:
            return ExecutionStrategy(batch_streams=self.batch_streams, channels_last=self.channels_last)
        return self.execution

    def train(self, mode: bool = True) -> EoSFM:
        """Set the training mode; leaving training after training passes logs the selection ranking."""
        if self.training and not mode:
            from eos_pangaea.pruning import log_selection_after_training

            log_selection_after_training(self)
        return super().train(mode)

    def describe_streams(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """Return ``(specialist, route name, input labels)`` for every stream."""
        labels = {(m, i): label for m, bands in self.input_bands.items() for i, label in enumerate(bands)}
        return [
            (self.specialists[s.specialist].name, s.route.name,
             tuple("0" if src is None else labels[src] for src in s.sources))
            for s in self.streams
        ]

    def specialist_digests(self) -> dict[str, str]:
        """Return the SHA-256 digest of each specialist's weights, by name."""
        return {s.name: self._digest(i) for i, s in enumerate(self.specialists)}

    def get_extra_state(self) -> dict:
        """Record which specialists the trained head was fitted on."""
        return {"specialists": [s.name for s in self.specialists], "sha256": self.specialist_digests()}

    def set_extra_state(self, state: dict) -> None:
        """Check that a loaded head was trained on these specialists.

        Raises:
            ValueError: The state names other specialists or other weights.
        """
        names = [s.name for s in self.specialists]
        if list(state.get("specialists", [])) != names:
            raise ValueError(
                f"This checkpoint was trained on specialists {state.get('specialists')} but the "
                f"ensemble has {names}; build the ensemble with the same specialists."
            )
        if self.specialists_in_state_dict:
            return  # The specialists' weights are loaded from the same state dict.
        current = self.specialist_digests()
        changed = [n for n, digest in state.get("sha256", {}).items() if current.get(n) != digest]
        if changed:
            raise ValueError(
                f"Specialists {changed} have other weights than those this checkpoint was trained "
                "with; load the same specialist weights (load_encoder_weights) before the checkpoint."
            )

    def _digest(self, index: int) -> str:
        specialist = self.specialists[index]
        tensors = specialist.state_dict()
        versions = tuple(t._version for t in tensors.values())
        cached = self._digest_cache.get(index)
        if cached is None or cached[0] != versions:
            cached = (versions, tensor_digest(tensors))
            self._digest_cache[index] = cached
        return cached[1]


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """Return a SHA-256 digest of named tensors: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _drop_specialists_hook(module: EoSFM, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    if not module.specialists_in_state_dict:
        for key in [k for k in state_dict if k.startswith(prefix + "specialists.")]:
            del state_dict[key]


def _ignore_missing_specialists_hook(module: EoSFM, incompatible_keys) -> None:
    # Post hooks may edit the reported keys in place; strict loading checks them afterwards.
    if not module.specialists_in_state_dict:
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if ".specialists." not in f".{k}"]


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

"""EoS-FM as a PANGAEA encoder.

:class:`EoSFMEncoder` is a thin adapter: it builds one :class:`~eos_pangaea.ensemble.EoSFM`
for the bands of the dataset PANGAEA passes in (``input_bands: ${dataset.bands}``)
and forwards PANGAEA's input dictionary to it. This is the only module that
imports PANGAEA.

PANGAEA's frozen protocol (``finetune=false``, its default) sets
``requires_grad=False`` on everything ``encoder.parameters()`` yields and calls
the encoder under ``torch.no_grad()``. EoS-FM must still train its selection
weights and fusion there, so the encoder:

1. yields only the frozen specialists' parameters from :meth:`parameters`,
   while ``named_parameters()``, ``state_dict()`` and the root module's
   ``parameters()`` (used by DDP and the optimiser) still contain the head;
2. runs the ensemble under ``torch.set_grad_enabled(self.training)``, so the
   head builds a graph inside the decoder's ``torch.no_grad()``;
3. keeps the specialists in eval mode, which the core does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

import torch
from pangaea.encoders.base import Encoder
from torch import nn

from eos_pangaea.ensemble import EoSFM
from eos_pangaea.specialists import load_specialist_specs

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"


class EoSFMEncoder(Encoder):
    """EoS-FM ensemble behind PANGAEA's ``Encoder`` interface.

    The specialists are fully convolutional, so any ``input_size`` works; the
    encoder configs set it to the dataset's ``img_size``. The encoder is
    single-temporal: PANGAEA's multi-temporal and Siamese decoders call it
    once per time step.

    Args:
        input_bands: Band names of each modality, as PANGAEA's dataset config
            lists them (``${dataset.bands}``).
        input_size: Training crop and sliding-window size in pixels.
        dataset_name: PANGAEA dataset name (``${dataset.dataset_name}``), for
            band names whose meaning depends on the dataset.
        model_name: Name that PANGAEA logs.
        specialists: Names of the manifest's specialists to use, in this
            order; ``None`` uses all of them.
        top_k: Number of specialists to keep after warm-up; ``None`` keeps all.
        selection_warmup_steps: Training forward passes of the ensemble that
            run every specialist before the top-k cut starts. Multi-temporal
            and Siamese decoders make one pass per time step.
        norm: Feature normalisation, ``"batch"``, ``"layer"`` or ``"none"``.
        width_multiplier: Multiplier of the fused widths 40/80/160/320.
        band_labels: Extra ``band name -> role`` entries for this dataset.
        missing_bands: ``"skip"`` or ``"zero"`` for routes whose bands are
            only partly present.
        batch_streams: Run all streams of one specialist as one batched call.
        channels_last: Run the specialists in channels-last memory format.
        execution: How to run the specialists (see :mod:`eos_pangaea.execution`),
            for example ``"auto"``; ``None`` follows ``batch_streams`` and
            ``channels_last``.
        encoder_weights: Weights source for :func:`eos_pangaea.weights.load_ensemble_weights`,
            or ``"random"`` to keep the random initialisation. A directory
            written by ``eos-pangaea prune`` also provides the trained head.
        download_url: Must be empty: the weights layer fetches the weights, so
            PANGAEA's own download stays off.
        embed_dim: Width of the last level, for PANGAEA's bookkeeping.
        output_layers: One entry per output level (PANGAEA reads its length).
        output_dim: Width of each output level, or ``None`` to take the
            fused widths. A given value must equal them.
        multi_temporal: Must be ``False``: the ensemble encodes one time step per call.
        multi_temporal_output: Passed to PANGAEA's decoders. ``True`` makes
            ``reg_upernet_mt_ltae`` build the channel adaptor that unequal
            widths need; single-temporal calls ignore it.
        pyramid_output: Must be ``True``: the outputs already have strides
            4/8/16/32, so the decoder adds no rescaling neck.

    Raises:
        ValueError: No specialist can use the dataset's bands, or an option
            is invalid.
    """

    def __init__(
        self,
        input_bands: Mapping[str, Sequence[str]],
        input_size: int,
        dataset_name: str | None = None,
        model_name: str = "eos_fm",
        specialists: Sequence[str] | None = None,
        top_k: int | None = None,
        selection_warmup_steps: int = 0,
        norm: str = "batch",
        width_multiplier: float = 1.0,
        band_labels: Mapping[str, str] | None = None,
        missing_bands: str = "skip",
        batch_streams: bool = True,
        channels_last: bool = False,
        execution: str | Mapping[str, bool] | None = None,
        encoder_weights: str = RANDOM_WEIGHTS,
        download_url: str = "",
        embed_dim: int | None = None,
        output_layers: Sequence[int] = (0, 1, 2, 3),
        output_dim: int | Sequence[int] | None = None,
        multi_temporal: bool | int = False,
        multi_temporal_output: bool = True,
        pyramid_output: bool = True,
    ) -> None:
        _check_options(download_url, multi_temporal, pyramid_output)
        bands = {str(m): [str(b) for b in names] for m, names in input_bands.items()}
        try:
            ensemble = EoSFM(
                load_specialist_specs(None if specialists is None else list(specialists)),
                bands,
                dataset=dataset_name,
                band_labels=dict(band_labels or {}),
                missing_bands=missing_bands,
                norm=norm,
                top_k=top_k,
                warmup_steps=selection_warmup_steps,
                width_multiplier=width_multiplier,
                batch_streams=batch_streams,
                channels_last=channels_last,
                execution=_plain_execution(execution),
                specialists_in_state_dict=False,
            )
        except ValueError as error:
            raise ValueError(f"EoS-FM cannot be built for dataset {dataset_name!r} with bands {bands}: {error}") from error

        widths = ensemble.out_channels
        if len(output_layers) != len(widths):
            raise ValueError(f"output_layers={list(output_layers)} has {len(output_layers)} entries but "
                             f"EoS-FM outputs {len(widths)} levels; use {list(range(len(widths)))}.")
        if output_dim is not None and _as_list(output_dim, len(widths)) != widths:
            raise ValueError(f"output_dim={output_dim} differs from the fused widths {widths}; set "
                             f"encoder.output_dim={widths} or encoder.output_dim=null.")

        super().__init__(
            model_name=model_name,
            input_bands=bands,
            input_size=input_size,
            embed_dim=widths[-1] if embed_dim is None else embed_dim,
            output_layers=list(output_layers),
            output_dim=widths,
            multi_temporal=False,
            multi_temporal_output=multi_temporal_output,
            pyramid_output=True,
            encoder_weights=encoder_weights,
            download_url="",
        )
        self.dataset_name = dataset_name
        self.ensemble = ensemble
        self._warned_frozen_head = False

    def load_encoder_weights(self, logger: logging.Logger) -> None:
        """Load the specialists' weights from ``encoder_weights``.

        PANGAEA's ``run.py`` calls this before it builds the decoder.

        Args:
            logger: The logger PANGAEA passes in.

        Raises:
            ValueError: The weights are missing, corrupt, unsafe or do not
                fit the specialists (see :mod:`eos_pangaea.weights`).
        """
        source = str(self.encoder_weights)
        warn_if_fusion_untrained(self, logger)
        counts = count_parameters(self)
        logger.info("EoS-FM parameters: %s in total (%s in specialists, %s in selection and fusion); "
                    "%s used per inference pass with top_k=%s",
                    f"{counts['total']:,}", f"{counts['specialists']:,}", f"{counts['head']:,}",
                    f"{counts['active']:,}", self.ensemble.selection.top_k)
        if source == RANDOM_WEIGHTS:
            logger.warning("EoS-FM: encoder_weights=random, so the specialists keep their random "
                           "initialisation. Results mean nothing beyond a smoke test; pass a weights "
                           "source (a folder, a file or hf://REPO@REVISION/FILENAME) for real runs.")
            return

        from eos_pangaea.pruning import is_pruned_export, load_pruned_head
        from eos_pangaea.weights import load_ensemble_weights

        load_ensemble_weights(self.ensemble, source, logger=logger)
        if is_pruned_export(source):
            load_pruned_head(self.ensemble, source)
            logger.info("EoS-FM: loaded the trained head (selection weights, normalisation statistics, "
                        "fusion) of the pruned ensemble in %s", source)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """Yield the frozen specialists' parameters only.

        PANGAEA's decoders freeze what this yields when ``finetune=false``, so
        the selection weights and fusion keep training. ``named_parameters()``
        and the root module's ``parameters()`` still yield every parameter;
        :meth:`head_parameters` yields the trained ones.
        """
        return self.ensemble.specialists.parameters(recurse)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Yield the trained parameters: selection weights and fusion."""
        for name, parameter in self.named_parameters():
            if not name.startswith("ensemble.specialists."):
                yield parameter

    def forward(self, x: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Compute the fused feature pyramid.

        Args:
            x: ``modality -> (B, C, H, W)`` tensor, or ``(B, C, 1, H, W)`` as
                PANGAEA's single-time regression UperNet passes it.

        Returns:
            ``len(output_layers)`` tensors ``(B, output_dim[i], H / s_i, W / s_i)``
            with strides 4, 8, 16 and 32.

        Raises:
            ValueError: A tensor has more than one time step or another rank.
        """
        inputs = {modality: _single_time_step(modality, tensor) for modality, tensor in x.items()}
        if self.training and not self._warned_frozen_head:
            self._warned_frozen_head = True
            warn_if_fusion_untrained(self, logger)
        # The head trains even inside the decoder's torch.no_grad() when finetune=false.
        with torch.set_grad_enabled(self.training):
            return self.ensemble(inputs)


def warn_if_fusion_untrained(encoder: EoSFMEncoder, log: logging.Logger) -> bool:
    """Log a warning when this configuration leaves part of the fusion untrained.

    Args:
        encoder: The encoder to check.
        log: Where to write the warning.

    Returns:
        Whether a warning was logged.
    """
    warned = False
    frozen = [name for name, p in encoder.named_parameters()
              if not name.startswith("ensemble.specialists.") and not p.requires_grad]
    if frozen:
        log.warning("EoS-FM: %s have requires_grad=False, so the fusion and selection weights will not "
                    "train. Something outside EoSFMEncoder froze them; call "
                    "`for p in encoder.head_parameters(): p.requires_grad_(True)` before building the optimiser.",
                    ", ".join(frozen))
        warned = True
    selection = encoder.ensemble.selection
    eligible = int(selection.eligible.sum())
    if selection.top_k is not None and selection.top_k < eligible and selection.warmup_steps == 0:
        log.warning("EoS-FM: top_k=%d of %d usable specialists with selection_warmup_steps=0: the "
                    "specialists dropped at initialisation never run, so their selection weights and "
                    "fusion columns never train. Set encoder.selection_warmup_steps to a positive "
                    "number of forward passes.", selection.top_k, eligible)
        warned = True
    return warned


def count_parameters(encoder: EoSFMEncoder) -> dict[str, int]:
    """Count the encoder's parameters.

    Returns:
        ``total`` (everything stored), ``specialists``, ``head`` (selection
        and fusion) and ``active``: the specialists that the top-k cut keeps
        now plus the fusion weights of their streams, which is what one
        inference pass uses.
    """
    ensemble = encoder.ensemble
    specialists = sum(p.numel() for p in ensemble.specialists.parameters())
    head = sum(p.numel() for p in encoder.head_parameters())
    kept = ensemble.selection.selected(training=False)

    kept_streams = [j for j, stream in enumerate(ensemble.streams) if stream.specialist in kept]
    fusion_used = sum(
        columns * conv.out_channels + conv.bias.numel()
        for conv, columns in zip(ensemble.fusion.convs, _columns_per_level(ensemble, kept_streams))
    )
    active = sum(p.numel() for i in kept for p in ensemble.specialists[i].parameters())
    return {"total": specialists + head, "specialists": specialists, "head": head,
            "active": active + fusion_used + ensemble.selection.weight.numel()}


def _columns_per_level(ensemble: EoSFM, streams: Sequence[int]) -> list[int]:
    offsets = ensemble.fusion.offsets
    return [sum(offsets[level][s + 1] - offsets[level][s] for s in streams) for level in range(len(offsets))]


def _single_time_step(modality: str, tensor: torch.Tensor) -> torch.Tensor:
    """Drop the time axis of a ``(B, C, 1, H, W)`` tensor; pass ``(B, C, H, W)`` through."""
    if tensor.dim() == 4:
        return tensor
    if tensor.dim() == 5 and tensor.shape[2] == 1:
        return tensor[:, :, 0]
    if tensor.dim() == 5:
        raise ValueError(
            f"Modality {modality!r} has {tensor.shape[2]} time steps (shape {tuple(tensor.shape)}), but "
            "EoS-FM encodes one time step per call. Use a multi-temporal decoder such as "
            "seg_upernet_mt_ltae or reg_upernet_mt_ltae, which call the encoder once per time step."
        )
    raise ValueError(f"Modality {modality!r} has shape {tuple(tensor.shape)}; expected (B, C, H, W) "
                     "or (B, C, 1, H, W).")


def _check_options(download_url: str, multi_temporal: bool | int, pyramid_output: bool) -> None:
    if download_url:
        raise ValueError(f"download_url={download_url!r}: EoS-FM fetches its weights through "
                         "encoder_weights; set encoder.download_url='' (the config's default).")
    if multi_temporal:
        raise ValueError(f"multi_temporal={multi_temporal!r}: EoS-FM encodes one time step per call; "
                         "keep encoder.multi_temporal=false and use a multi-temporal decoder.")
    if not pyramid_output:
        raise ValueError("pyramid_output=false: EoS-FM outputs a feature pyramid (strides 4/8/16/32); "
                         "keep encoder.pyramid_output=true.")


def _plain_execution(execution: str | Mapping[str, bool] | None) -> str | dict[str, bool] | None:
    """Turn an OmegaConf mapping from the encoder config into a plain dict."""
    if execution is None or isinstance(execution, str):
        return execution
    return dict(execution)


def _as_list(value: int | Sequence[int], levels: int) -> list[int]:
    return [int(value)] * levels if isinstance(value, int) else [int(v) for v in value]

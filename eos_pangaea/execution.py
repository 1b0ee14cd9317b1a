"""How the selected specialists of an EoS-FM ensemble are executed.

Step 2 of EoS-FM runs every selected specialist on each of its streams. The
result does not depend on how those calls are arranged, but the speed does,
so the arrangement is an :class:`ExecutionStrategy`:

- ``batch_streams``: the streams of one specialist go through it as one
  call, concatenated along the batch.
- ``stack_specialists``: specialists with the same architecture and the same
  number of streams run together as one call, with their weights stacked by
  :func:`torch.func.stack_module_state` and the forward vectorised by
  :func:`torch.vmap`.
- ``channels_last``: inputs and specialists use the channels-last memory
  format (not applied inside stacked groups).
- ``fold_head``: in eval mode without gradients, the normalisation
  statistics and selection weights are folded into the fusion weights, so
  the features go straight into one 1x1 convolution per level. This works
  with batch norm (running statistics) or no normalisation, but not with
  layer norm, whose statistics depend on each sample.
- ``bf16_autocast``: the specialists run under bfloat16 autocast; their
  features are cast back to the input dtype before normalisation. Autocast
  does not reach inside :func:`torch.vmap` (seen with torch 2.14.1 on CPU),
  so stacked groups run with bfloat16 weights and inputs instead.

Every strategy gives the plain one-specialist-at-a-time loop's features
within float tolerance (bfloat16 within bfloat16 tolerance);
``tests/test_execution.py`` checks each one. :data:`DEVICE_DEFAULTS` contains the
strategy that ``execution="auto"`` picks per device type, chosen from
``benchmarks/bench_ensemble.py`` (results in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

if TYPE_CHECKING:
    from eos_pangaea.ensemble import EoSFM

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutionStrategy:
    """Arrangement of the specialist calls; every field changes speed, not results.

    Attributes:
        batch_streams: Run all streams of one specialist as one call.
        stack_specialists: Run same-architecture specialists with the same
            number of streams as one vectorised call.
        channels_last: Use the channels-last memory format for specialists
            that run alone.
        bf16_autocast: Run the specialists under bfloat16 autocast.
        fold_head: In eval mode without gradients, fold the normalisation
            and the selection weights into the fusion weights.
    """

    batch_streams: bool = True
    stack_specialists: bool = False
    channels_last: bool = False
    bf16_autocast: bool = False
    fold_head: bool = False

    @classmethod
    def for_device(cls, device: torch.device | str) -> ExecutionStrategy:
        """Return the default strategy of a device type (see :data:`DEVICE_DEFAULTS`)."""
        return DEVICE_DEFAULTS.get(torch.device(device).type, PLAIN)

    @classmethod
    def from_value(cls, value: ExecutionStrategy | str | Mapping[str, bool]) -> ExecutionStrategy | str:
        """Convert a config value to a strategy, or return ``"auto"`` unchanged.

        Args:
            value: A strategy, ``"auto"`` (the device's default, decided at
                each forward), ``"plain"`` (one call per stream), or a mapping
                of field names to booleans, as in a Hydra config.

        Raises:
            ValueError: An unknown name or field, or a non-boolean value.
        """
        if isinstance(value, ExecutionStrategy):
            return value
        if isinstance(value, str):
            if value == "auto":
                return value
            if value == "plain":
                return PLAIN
            raise ValueError(f"execution={value!r} is invalid; use 'auto', 'plain' or a mapping of {_FIELD_NAMES}")
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(_FIELD_NAMES))
            if unknown:
                raise ValueError(f"Unknown execution options {unknown}; the options are {_FIELD_NAMES}")
            for name, flag in value.items():
                if not isinstance(flag, bool):
                    raise ValueError(f"Execution option {name}={flag!r} is invalid; use true or false")
            return cls(**dict(value))
        raise ValueError(f"execution={value!r} is invalid; use 'auto', 'plain' or a mapping of {_FIELD_NAMES}")


_FIELD_NAMES = tuple(f.name for f in fields(ExecutionStrategy))

#: One call per stream, float32, contiguous: the reference every strategy is tested against.
PLAIN = ExecutionStrategy(batch_streams=False)

#: Strategy of ``execution="auto"`` per device type, from ``docs/benchmarks.md``
#: (AMD EPYC with AVX512-BF16, 1 thread, torch 2.14.1). On CPU no strategy paid:
#: batched streams 0.97-1.03x, channels-last 0.93-1.01x, folding 1.00-1.02x,
#: stacking 0.34-0.47x. bfloat16 autocast ran 1.27-1.34x faster but changes features by
#: about 1 % and depends on the CPU's bfloat16 instructions, so it stays opt-in.
#: NOTE: no GPU was measured; CUDA keeps the core's previous behaviour (streams
#: batched) until ``benchmarks/bench_ensemble.py --device cuda`` shows what pays.
DEVICE_DEFAULTS: dict[str, ExecutionStrategy] = {
    "cpu": PLAIN,
    "cuda": ExecutionStrategy(batch_streams=True),
}


def folds_head(model: EoSFM, strategy: ExecutionStrategy) -> bool:
    """Return whether this forward pass may fold the head into the fusion weights.

    Folding needs fixed statistics (batch norm in eval mode with running
    statistics, or no normalisation) and no gradients, since the folded
    weights are computed without autograd.
    """
    if not strategy.fold_head or model.training or torch.is_grad_enabled():
        return False
    return model.norms.kind == "none" or (
        model.norms.kind == "batch" and all(n.track_running_stats for norms in model.norms.norms for n in norms)
    )


def run_folded(
    model: EoSFM,
    selected: Sequence[int],
    stacked: torch.Tensor,
    strategy: ExecutionStrategy,
) -> list[torch.Tensor]:
    """Compute the fused pyramid with the normalisation and selection folded into the fusion.

    Per stream and level, eval-mode batch norm followed by the selection
    weight ``w`` is one affine map ``x * a + c`` per channel, with
    ``a = w / sqrt(var + eps)`` and ``c = -mean * a``. The fusion
    convolution absorbs it as ``W' = W * a`` and ``b' = b + W @ c``. The map
    is affine per channel, so it also commutes with the bilinear resizing of
    maps whose sizes differ.
    """
    from eos_pangaea.ensemble import _match_sizes

    stream_ids: list[int] = []
    pyramids: list[list[torch.Tensor]] = []
    for _, stream, features in run_selected(model, selected, stacked, strategy):
        stream_ids.append(stream)
        pyramids.append(features)
    pyramids = _match_sizes(pyramids)

    weights, biases = _folded_fusion(model, tuple(stream_ids), stacked.device, stacked.dtype)
    outputs = []
    for level, (weight, bias) in enumerate(zip(weights, biases)):
        maps = torch.cat([pyramid[level] for pyramid in pyramids], dim=1)
        outputs.append(F.conv2d(maps, weight, bias))
    return outputs


def run_selected(
    model: EoSFM,
    selected: Sequence[int],
    stacked: torch.Tensor,
    strategy: ExecutionStrategy,
) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """Run the selected specialists on their streams.

    Args:
        model: The ensemble.
        selected: Indices of the specialists to run, ascending.
        stacked: The input with every modality concatenated along channels.
        strategy: How to arrange the calls.

    Yields:
        ``(specialist, stream, pyramid)`` in ensemble order of specialists
        and, within one specialist, of streams. Pyramids have the dtype of
        ``stacked``.
    """
    autocast = (
        torch.autocast(stacked.device.type, dtype=torch.bfloat16) if strategy.bf16_autocast else nullcontext()
    )
    routed = RoutedInputs(model, stacked)
    with autocast:
        if strategy.stack_specialists:
            results = _run_stacked_groups(model, selected, routed, strategy)
        else:
            results = {i: run_specialist(model, i, model._streams_of[i], routed, strategy) for i in selected}

    for specialist in selected:
        for stream, pyramid in zip(model._streams_of[specialist], results[specialist]):
            yield specialist, stream, [level.to(stacked.dtype) for level in pyramid]


class RoutedInputs:
    """The input of each stream, gathered once per distinct channel list.

    Streams with the same sources (on an RGB input, every RGB stream) share
    one tensor, and a stream that takes every input channel in order uses
    the stacked input itself, without a copy.

    Args:
        model: The ensemble.
        stacked: The input with every modality concatenated along channels.
    """

    def __init__(self, model: EoSFM, stacked: torch.Tensor) -> None:
        self.model = model
        self.stacked = stacked
        self._gathered: dict[tuple, torch.Tensor] = {}

    def __getitem__(self, stream: int) -> torch.Tensor:
        """Return the input of one stream."""
        sources = self.model.streams[stream].sources
        tensor = self._gathered.get(sources)
        if tensor is None:
            if _is_identity(self.model, stream, self.stacked.shape[1]):
                tensor = self.stacked
            else:
                tensor = self.model.adapter.gather(self.stacked, stream)
            self._gathered[sources] = tensor
        return tensor


def run_specialist(
    model: EoSFM,
    specialist: int,
    stream_ids: Sequence[int],
    inputs: torch.Tensor | RoutedInputs,
    strategy: ExecutionStrategy,
) -> list[list[torch.Tensor]]:
    """Run one specialist on each of its streams and return one pyramid per stream.

    Args:
        model: The ensemble.
        specialist: Index of the specialist.
        stream_ids: Its streams.
        inputs: The stacked input, or the routed inputs of this forward pass.
        strategy: How to arrange the calls.
    """
    routed = inputs if isinstance(inputs, RoutedInputs) else RoutedInputs(model, inputs)
    inputs = [routed[stream] for stream in stream_ids]
    module = model.specialists[specialist]
    if strategy.channels_last:
        _ensure_channels_last(model, specialist)
        inputs = [i.contiguous(memory_format=torch.channels_last) for i in inputs]
    if not strategy.batch_streams or len(inputs) == 1:
        return [module(i) for i in inputs]
    batch = inputs[0].shape[0]
    levels = module(torch.cat(inputs, dim=0))
    return [[level[n * batch:(n + 1) * batch] for level in levels] for n in range(len(inputs))]


def _run_stacked_groups(
    model: EoSFM,
    selected: Sequence[int],
    routed: RoutedInputs,
    strategy: ExecutionStrategy,
) -> dict[int, list[list[torch.Tensor]]]:
    """Run groups of same-architecture specialists with vmap and the rest alone."""
    groups: dict[tuple, list[int]] = {}
    for specialist in selected:
        key = (_architecture_key(model, specialist), len(model._streams_of[specialist]))
        groups.setdefault(key, []).append(specialist)

    results: dict[int, list[list[torch.Tensor]]] = {}
    for (architecture, _), members in groups.items():
        if len(members) == 1:
            member = members[0]
            results[member] = run_specialist(model, member, model._streams_of[member], routed, strategy)
        else:
            dtype = torch.bfloat16 if strategy.bf16_autocast else None
            results.update(_run_group(model, members, architecture, routed, dtype))
    return results


def _run_group(
    model: EoSFM,
    members: Sequence[int],
    architecture: tuple,
    routed: RoutedInputs,
    dtype: torch.dtype | None = None,
) -> dict[int, list[list[torch.Tensor]]]:
    """Run specialists of one architecture as a single vectorised call.

    Every member receives its streams concatenated along the batch, so the
    vectorised input is ``(members, streams * B, C, H, W)``. With ``dtype``,
    floating-point weights and the input are cast to it first.
    """
    stacked = routed.stacked
    batch = stacked.shape[0]
    inputs = torch.stack([torch.cat([routed[s] for s in model._streams_of[m]], dim=0) for m in members])
    params, buffers = _stacked_state(model, members, stacked.device, dtype)
    if dtype is not None:
        inputs = inputs.to(dtype)
    template = _template(model, members[0], architecture)

    def call(p: dict, b: dict, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(functional_call(template, (p, b), (x,)))

    with torch.no_grad():
        levels = torch.vmap(call)(params, buffers, inputs)

    results = {}
    for row, member in enumerate(members):
        count = len(model._streams_of[member])
        results[member] = [[level[row, n * batch:(n + 1) * batch] for level in levels] for n in range(count)]
    return results


class _ModelCache:
    """Per-ensemble caches of stacked weights, templates and architecture keys."""

    def __init__(self) -> None:
        self.stacked: dict[tuple, tuple[tuple, dict, dict]] = {}
        self.templates: dict[tuple, nn.Module] = {}
        self.architectures: dict[int, tuple] = {}
        self.channels_last: set[int] = set()
        self.identity: dict[tuple[int, int], bool] = {}
        self.folded: dict[tuple[int, ...], tuple[tuple, list, list]] = {}


_CACHES: weakref.WeakKeyDictionary[nn.Module, _ModelCache] = weakref.WeakKeyDictionary()

# Stacked copies of this many member sets are kept per ensemble; during
# training the top-k set changes rarely, and in eval mode never.
_MAX_STACKED_SETS = 2


def _cache(model: EoSFM) -> _ModelCache:
    cache = _CACHES.get(model)
    if cache is None:
        cache = _CACHES[model] = _ModelCache()
    return cache


def _architecture_key(model: EoSFM, specialist: int) -> tuple:
    """Return the module type plus every parameter and buffer name and shape."""
    cache = _cache(model)
    key = cache.architectures.get(specialist)
    if key is None:
        backbone = model.specialists[specialist].backbone
        shapes = tuple((name, tuple(t.shape)) for name, t in _named_tensors(backbone))
        key = cache.architectures[specialist] = (type(backbone).__qualname__, shapes)
    return key


def _template(model: EoSFM, specialist: int, architecture: tuple) -> nn.Module:
    """Return a weightless (meta-device) copy of a backbone for ``functional_call``."""
    cache = _cache(model)
    template = cache.templates.get(architecture)
    if template is None:
        template = cache.templates[architecture] = copy.deepcopy(model.specialists[specialist].backbone).to("meta")
    return template


def _stacked_state(
    model: EoSFM, members: Sequence[int], device: torch.device, dtype: torch.dtype | None = None
) -> tuple[dict, dict]:
    """Return the members' stacked parameters and buffers, rebuilt when any weight changed.

    A weight counts as changed when its storage or its version counter
    changed, which covers ``load_state_dict``, in-place edits and ``.to()``.
    """
    backbones = [model.specialists[m].backbone for m in members]
    fingerprint = (device, dtype, tuple((t.data_ptr(), t._version) for b in backbones for _, t in _named_tensors(b)))
    cache = _cache(model)
    key = (tuple(members), dtype)
    entry = cache.stacked.get(key)
    if entry is None or entry[0] != fingerprint:
        params, buffers = stack_module_state(backbones)
        if dtype is not None:
            params = {n: t.to(dtype) if t.is_floating_point() else t for n, t in params.items()}
            buffers = {n: t.to(dtype) if t.is_floating_point() else t for n, t in buffers.items()}
        entry = (fingerprint, params, buffers)
        cache.stacked.pop(key, None)
        while len(cache.stacked) >= _MAX_STACKED_SETS:
            cache.stacked.pop(next(iter(cache.stacked)))
        cache.stacked[key] = entry
        logger.debug("Stacked the weights of specialists %s", list(members))
    return entry[1], entry[2]


def _folded_fusion(
    model: EoSFM, streams: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Return the folded fusion weights and biases of these streams, rebuilt when the head changed."""
    head = [model.selection.weight, *model.fusion.parameters(), *model.norms.buffers()]
    fingerprint = (device, dtype, tuple((t.data_ptr(), t._version) for t in head))
    cache = _cache(model)
    entry = cache.folded.get(streams)
    if entry is not None and entry[0] == fingerprint:
        return entry[1], entry[2]

    weights, biases = [], []
    with torch.no_grad():
        for level, conv in enumerate(model.fusion.convs):
            columns = []
            bias = conv.bias.double().clone()
            offsets = model.fusion.offsets[level]
            for stream in streams:
                scale, shift = _stream_affine(model, stream, level)
                block = conv.weight[:, offsets[stream]:offsets[stream + 1], 0, 0].double()
                columns.append(block * scale)
                bias += block @ shift
            weights.append(torch.cat(columns, dim=1)[:, :, None, None].to(device, dtype))
            biases.append(bias.to(device, dtype))
    cache.folded.pop(streams, None)
    while len(cache.folded) >= _MAX_STACKED_SETS:
        cache.folded.pop(next(iter(cache.folded)))
    cache.folded[streams] = (fingerprint, weights, biases)
    return weights, biases


def _stream_affine(model: EoSFM, stream: int, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(a, c)`` such that normalise-then-weight is ``x * a + c`` per channel, in float64."""
    weight = model.selection.weight[model.streams[stream].specialist].double()
    norm = model.norms.norms[stream][level]
    if isinstance(norm, nn.BatchNorm2d):
        scale = torch.rsqrt(norm.running_var.double() + norm.eps) * weight
        return scale, -norm.running_mean.double() * scale
    channels = model.fusion.offsets[level][stream + 1] - model.fusion.offsets[level][stream]
    device = model.selection.weight.device
    return torch.full((channels,), float(weight), dtype=torch.float64, device=device), torch.zeros(
        channels, dtype=torch.float64, device=device)


def _is_identity(model: EoSFM, stream: int, channels: int) -> bool:
    """Return whether a stream takes all ``channels`` input channels in their order."""
    cache = _cache(model)
    key = (stream, channels)
    identity = cache.identity.get(key)
    if identity is None:
        index = getattr(model.adapter, f"index_{stream}").tolist()
        identity = cache.identity[key] = index == list(range(channels))
    return identity


def _named_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from module.named_buffers()


def _ensure_channels_last(model: EoSFM, specialist: int) -> None:
    cache = _cache(model)
    if specialist not in cache.channels_last:
        model.specialists[specialist].to(memory_format=torch.channels_last)
        cache.channels_last.add(specialist)

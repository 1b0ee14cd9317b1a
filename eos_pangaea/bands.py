"""Step 1 of EoS-FM: adapt the bands of a sample to each specialist.

Routing works on band *roles* (red, near-infrared, VV, ...), never on channel
counts. The shipped table ``data/band_roles.yaml`` turns band labels into
roles, both a dataset's labels and the bands each specialist declares. It also
records where PANGAEA datasets use Sentinel-2 names for other sensors.
Each specialist then receives its own declared bands (the ``exact`` route)
plus every rule of ``data/routes.yaml`` that matches its channel count, for
example the EoS-FM paper's Sentinel-2 RGB, IR-R-G and Sentinel-1 pseudo-RGB
rules. Every route whose roles the input has yields one stream.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch
import yaml
from torch import nn

logger = logging.getLogger(__name__)

MISSING_BAND_POLICIES = ("skip", "zero")


@dataclass(frozen=True)
class Route:
    """A named list of roles that one specialist receives, in channel order."""

    name: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Stream:
    """One (specialist, route) pair and where each of its channels comes from.

    Attributes:
        specialist: Index of the specialist in the ensemble.
        route: The route, whose ``name`` joins the names of merged routes
            (``exact+ir_r_g``) when several rules give the same bands.
        sources: For each channel, ``(modality, channel index)`` in the input,
            or ``None`` for a channel filled with zeros.
    """

    specialist: int
    route: Route
    sources: tuple[tuple[str, int] | None, ...]


@dataclass(frozen=True)
class RoutingRule:
    """A band adaptation rule applied to every specialist with ``in_chans`` inputs."""

    name: str
    in_chans: int
    roles: tuple[str, ...]
    description: str = ""


class BandRoleTable:
    """Meaning of band labels: global labels plus per-dataset overrides.

    Args:
        table: The parsed ``band_roles.yaml`` (keys ``roles``, ``labels`` and
            ``datasets``). Defaults to the shipped table.
    """

    def __init__(self, table: Mapping | None = None) -> None:
        table = table if table is not None else _load_yaml("band_roles.yaml")
        self.roles: dict[str, str] = dict(table["roles"])
        self.labels: dict[str, str] = {canonical_label(k): v for k, v in table["labels"].items()}
        self.datasets: dict[str, dict[str, str]] = {}
        for name, entry in table.get("datasets", {}).items():
            labels = {canonical_label(k): v for k, v in entry["labels"].items()}
            for key in [name, *entry.get("aliases", [])]:
                self.datasets[key.lower()] = labels
        for role in [*self.labels.values(), *(r for d in self.datasets.values() for r in d.values())]:
            if role not in self.roles:
                raise ValueError(f"band_roles.yaml: role {role!r} is used but not listed under 'roles'")

    def roles_of(
        self,
        labels: Sequence[str],
        dataset: str | None = None,
        extra_labels: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Return the role of each band label.

        Args:
            labels: Band labels in channel order (PANGAEA or torchgeo names).
            dataset: PANGAEA dataset name or config name whose overrides apply.
            extra_labels: Caller-supplied ``label -> role`` entries, checked first.

        Raises:
            ValueError: A label has no known role, or an extra entry names an
                unknown role.
        """
        table = dict(self.labels)
        if dataset is not None:
            table.update(self.datasets.get(dataset.lower(), {}))
        for label, role in (extra_labels or {}).items():
            if role not in self.roles:
                raise ValueError(
                    f"Unknown band role {role!r} for label {label!r}; known roles: {sorted(self.roles)}"
                )
            table[canonical_label(label)] = role

        roles = []
        for label in labels:
            role = table.get(canonical_label(label))
            if role is None:
                raise ValueError(
                    f"Unknown band name {label!r}. Known names: {sorted(table)}. Use PANGAEA's "
                    "names (B1..B12, B8A, VV, VH, ...) or map the name to a role with "
                    "band_labels={'NAME': 'role'}."
                )
            roles.append(role)
        return roles


def canonical_label(label: str) -> str:
    """Return PANGAEA's spelling of a band label (``b01`` and ``B01`` become ``B1``)."""
    text = str(label).strip().upper()
    return re.sub(r"^B0(\d)$", r"B\1", text)


@lru_cache(maxsize=1)
def default_role_table() -> BandRoleTable:
    """Return the shipped band role table."""
    return BandRoleTable()


@lru_cache(maxsize=1)
def default_rules() -> tuple[RoutingRule, ...]:
    """Return the shipped routing rules of ``data/routes.yaml``."""
    rules = []
    for entry in _load_yaml("routes.yaml")["rules"]:
        roles = tuple(entry["roles"])
        if len(roles) != entry["in_chans"]:
            raise ValueError(f"routes.yaml: rule {entry['name']!r} lists {len(roles)} roles for {entry['in_chans']} channels")
        rules.append(RoutingRule(entry["name"], int(entry["in_chans"]), roles, entry.get("description", "")))
    return tuple(rules)


def plan_streams(
    specialist_bands: Sequence[tuple[str, Sequence[str]]],
    input_bands: Mapping[str, Sequence[str]],
    *,
    dataset: str | None = None,
    band_labels: Mapping[str, str] | None = None,
    missing_bands: str = "skip",
    rules: Sequence[RoutingRule] | None = None,
    role_table: BandRoleTable | None = None,
) -> list[Stream]:
    """Decide which streams each specialist receives for the given input bands.

    Args:
        specialist_bands: ``(name, declared bands)`` of each specialist, in
            ensemble order.
        input_bands: Band labels of each input modality, in channel order.
        dataset: Dataset name, for labels whose meaning depends on the dataset.
        band_labels: Extra ``label -> role`` entries for the input bands.
        missing_bands: ``"skip"`` drops a route whose bands are only partly
            present; ``"zero"`` keeps it and fills the missing channels with
            zeros. A route with none of its bands present is always dropped.
        rules: Routing rules; defaults to the shipped ones.
        role_table: Band role table; defaults to the shipped one.

    Returns:
        The streams in ensemble order, one per distinct route of each specialist.

    Raises:
        ValueError: Unknown band names, an invalid ``missing_bands``, or an
            input that no specialist can use.
    """
    if missing_bands not in MISSING_BAND_POLICIES:
        raise ValueError(f"missing_bands={missing_bands!r} is invalid; use one of {MISSING_BAND_POLICIES}")
    table = role_table or default_role_table()
    rules = default_rules() if rules is None else tuple(rules)
    if dataset is not None and dataset.lower() not in table.datasets:
        logger.warning("Dataset %r has no entry in band_roles.yaml; reading its band labels with their "
                       "Sentinel-1/2 meanings. Check the name, or pass band_labels for other sensors.", dataset)
    available = _input_roles(input_bands, dataset, band_labels, table)

    streams: list[Stream] = []
    for index, (name, bands) in enumerate(specialist_bands):
        for route in _candidate_routes(table.roles_of(bands), rules):
            sources = tuple(available.get(role) for role in route.roles)
            present = sum(source is not None for source in sources)
            if present == len(sources) or (present and missing_bands == "zero"):
                if present < len(sources):
                    logger.info("Specialist %s, route %s: zero-filling missing roles %s", name, route.name,
                                [r for r, s in zip(route.roles, sources) if s is None])
                streams.append(Stream(index, route, sources))
            elif present:
                logger.info("Specialist %s, route %s: skipped, input lacks roles %s (missing_bands='skip')",
                            name, route.name, [r for r, s in zip(route.roles, sources) if s is None])
            else:
                logger.debug("Specialist %s, route %s: skipped, none of its roles is present", name, route.name)

    if not streams:
        raise ValueError(_no_stream_message(specialist_bands, input_bands, available, table))
    return streams


def _input_roles(input_bands, dataset, band_labels, table) -> dict[str, tuple[str, int]]:
    """Map each role of the input to its first (modality, channel) source."""
    available: dict[str, tuple[str, int]] = {}
    for modality, labels in input_bands.items():
        for channel, role in enumerate(table.roles_of(list(labels), dataset, band_labels)):
            if role in available:
                logger.debug("Role %s appears twice in the input; using %s", role, available[role])
                continue
            available[role] = (modality, channel)
    return available


def _candidate_routes(own_roles: Sequence[str], rules: Sequence[RoutingRule]) -> list[Route]:
    """Return the exact route then each matching rule, merging identical role lists."""
    merged: dict[tuple[str, ...], list[str]] = {tuple(own_roles): ["exact"]}
    for rule in rules:
        if rule.in_chans == len(own_roles):
            merged.setdefault(rule.roles, []).append(rule.name)
    return [Route("+".join(names), roles) for roles, names in merged.items()]


def _no_stream_message(specialist_bands, input_bands, available, table) -> str:
    lines = [
        "No specialist can use this input.",
        "Input bands (label -> role): "
        + "; ".join(
            f"{modality}: " + ", ".join(f"{label}->{role}" for label, role in zip(labels, available_roles(labels, available, modality)))
            for modality, labels in input_bands.items()
        ),
        "What each specialist needs (its own bands, or any rule for its channel count):",
    ]
    for name, bands in specialist_bands:
        lines.append(f"  {name}: {', '.join(bands)} (roles {', '.join(table.roles_of(bands))})")
    lines.append(
        "Fix: pass band names with a known meaning (band_labels={'NAME': 'role'}), add a "
        "specialist trained on these bands, or use missing_bands='zero' to zero-fill partly present routes."
    )
    return "\n".join(lines)


def available_roles(labels, available, modality) -> list[str]:
    """Return the role of each label of one modality as recorded in ``available``."""
    by_source = {source: role for role, source in available.items()}
    return [by_source.get((modality, channel), "duplicate") for channel in range(len(labels))]


class BandAdapter(nn.Module):
    """Gathers the channels of each stream from the input dictionary.

    All modalities are concatenated along channels (they share height and
    width in PANGAEA), with one zero channel appended when a stream is
    zero-filled, so that each stream is a single ``index_select``.

    Args:
        streams: The streams planned by :func:`plan_streams`.
        input_bands: Band labels of each input modality, in channel order.
    """

    def __init__(self, streams: Sequence[Stream], input_bands: Mapping[str, Sequence[str]]) -> None:
        super().__init__()
        self.modalities = list(input_bands)
        self.channel_counts = {m: len(b) for m, b in input_bands.items()}
        offsets, total = {}, 0
        for modality in self.modalities:
            offsets[modality] = total
            total += self.channel_counts[modality]
        self.zero_channel = total
        self.needs_zero = any(source is None for stream in streams for source in stream.sources)
        for index, stream in enumerate(streams):
            gather = [self.zero_channel if s is None else offsets[s[0]] + s[1] for s in stream.sources]
            self.register_buffer(f"index_{index}", torch.tensor(gather, dtype=torch.long), persistent=False)

    def stack_input(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the modalities of ``x`` into one ``(B, C, H, W)`` tensor."""
        parts = []
        for modality in self.modalities:
            if modality not in x:
                raise ValueError(f"Input lacks modality {modality!r}; it has {sorted(x)}. "
                                 f"The ensemble was built for {self.modalities}.")
            tensor = x[modality]
            if tensor.dim() != 4 or tensor.shape[1] != self.channel_counts[modality]:
                raise ValueError(
                    f"Modality {modality!r} has shape {tuple(tensor.shape)}; expected (B, "
                    f"{self.channel_counts[modality]}, H, W) for its declared bands."
                )
            parts.append(tensor)
        if self.needs_zero:
            parts.append(parts[0].new_zeros(parts[0].shape[0], 1, *parts[0].shape[2:]))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def gather(self, stacked: torch.Tensor, stream_index: int) -> torch.Tensor:
        """Return the channels of one stream from the stacked input."""
        return stacked.index_select(1, getattr(self, f"index_{stream_index}"))


def _load_yaml(name: str) -> dict:
    text = resources.files("eos_pangaea").joinpath("data", name).read_text(encoding="utf-8")
    return yaml.safe_load(text)

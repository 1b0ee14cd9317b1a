"""``eos-pangaea inspect``: which specialists see an input, through which routes."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` sub-command."""
    parser = subparsers.add_parser(
        "inspect",
        help="show which band routes fire for each specialist",
        description=(
            "List the streams (specialist, route, input bands) that EoS-FM builds for a "
            "dataset's bands. Give the bands with --bands, or a PANGAEA dataset config with "
            "--dataset-config (its 'bands' and 'dataset_name' are read)."
        ),
    )
    parser.add_argument(
        "--bands", action="append", default=[], metavar="MODALITY=B1,B2,...",
        help="bands of one input modality in channel order; repeat for each modality",
    )
    parser.add_argument("--dataset", help="dataset name whose band meanings apply (for example xView2)")
    parser.add_argument("--dataset-config", type=Path, help="PANGAEA dataset YAML to read bands and name from")
    parser.add_argument("--specialists", help="comma-separated specialist names (default: all 21)")
    parser.add_argument(
        "--missing-bands", choices=("skip", "zero"), default="skip",
        help="routes whose bands are only partly present: skip them (default) or zero-fill",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the routing plan."""
    from eos_pangaea.bands import plan_streams
    from eos_pangaea.specialists import load_specialist_specs

    input_bands, dataset = _input_bands(args)
    names = args.specialists.split(",") if args.specialists else None
    specs = load_specialist_specs(names)
    streams = plan_streams(
        [(s.name, s.bands) for s in specs], input_bands, dataset=dataset, missing_bands=args.missing_bands
    )
    labels = {(m, i): label for m, bands in input_bands.items() for i, label in enumerate(bands)}
    print(f"Input: {_format_bands(input_bands)}" + (f" (dataset {dataset})" if dataset else ""))
    print(f"{'specialist':<16} {'route':<22} input bands")
    for stream in streams:
        sources = ", ".join("zeros" if s is None else labels[s] for s in stream.sources)
        print(f"{specs[stream.specialist].name:<16} {stream.route.name:<22} {sources}")
    seeing = {s.specialist for s in streams}
    blind = [spec.name for i, spec in enumerate(specs) if i not in seeing]
    print(f"{len(streams)} streams from {len(seeing)} of {len(specs)} specialists.")
    if blind:
        print(f"No route for: {', '.join(blind)}")
    return 0


def _input_bands(args: argparse.Namespace) -> tuple[dict[str, list[str]], str | None]:
    dataset = args.dataset
    if args.dataset_config:
        import yaml

        if not args.dataset_config.is_file():
            raise FileNotFoundError(f"Dataset config {args.dataset_config} not found")
        config = yaml.safe_load(args.dataset_config.read_text(encoding="utf-8")) or {}
        if "bands" not in config:
            raise ValueError(f"{args.dataset_config} has no 'bands' entry; is it a PANGAEA dataset config?")
        bands = {m: [str(b) for b in labels] for m, labels in config["bands"].items()}
        return bands, dataset or config.get("dataset_name")
    if not args.bands:
        raise ValueError("Give the input bands with --bands optical=B4,B3,B2 (repeat per modality) "
                         "or --dataset-config PATH")
    bands = {}
    for item in args.bands:
        modality, sep, labels = item.partition("=")
        names = [label.strip() for label in labels.split(",")]
        if not sep or not modality or not all(names):
            raise ValueError(f"--bands {item!r} is invalid; write MODALITY=B1,B2,... such as optical=B4,B3,B2, "
                             "with no empty band name")
        if modality in bands:
            raise ValueError(f"--bands gives modality {modality!r} twice; list all of its bands in one --bands")
        bands[modality] = names
    return bands, dataset


def _format_bands(bands: dict[str, list[str]]) -> str:
    return "; ".join(f"{m}: {', '.join(labels)}" for m, labels in bands.items())

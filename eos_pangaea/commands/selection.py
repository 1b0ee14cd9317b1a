"""``eos-pangaea selection``: rank the specialists of a trained run by selection weight."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``selection`` sub-command."""
    parser = subparsers.add_parser(
        "selection",
        help="rank a checkpoint's specialists by selection weight",
        description=(
            "Read the selection weights from a PANGAEA checkpoint of an EoS-FM run and list the "
            "specialists from the largest weight down, marking the top-k ones that eval mode keeps. "
            "Needs no specialist weights. k comes from --top-k, else from the run's "
            "configs/config.yaml when it exists, else every specialist counts as kept."
        ),
    )
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="checkpoint_*.pth of a PANGAEA experiment folder")
    parser.add_argument("--run-config", type=Path, metavar="FILE",
                        help="the run's Hydra config (default: configs/config.yaml in the checkpoint's folder, if present)")
    parser.add_argument("--top-k", type=int, metavar="K", help="number of specialists kept (default: the run's encoder.top_k)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the ranking."""
    import torch

    from eos_pangaea.commands.prune import check_top_k
    from eos_pangaea.pruning import load_checkpoint_head, selection_report
    from eos_pangaea.selection import SpecialistSelection

    head = load_checkpoint_head(args.checkpoint)
    weights = head["selection.weight"]
    names = _specialist_names(head, args.checkpoint, len(weights))
    eligible = head.get("selection.eligible", torch.ones(len(weights), dtype=torch.bool))
    if args.top_k is not None:
        check_top_k(args.top_k, len(names), f"checkpoint {args.checkpoint}")
    selection = SpecialistSelection(names, eligible.tolist(), _top_k(args))
    with torch.no_grad():
        selection.weight.copy_(weights)

    if args.json:
        rows = [{"rank": rank, "specialist": name, "weight": weight, "kept": kept}
                for rank, (name, weight, kept) in enumerate(selection.ranking(), start=1)]
        print(json.dumps(rows, indent=2))
    else:
        print(selection_report(selection))
    return 0


def _specialist_names(head: dict, checkpoint: Path, count: int) -> list[str]:
    extra = head.get("_extra_state")
    names = list(extra.get("specialists", [])) if isinstance(extra, dict) else []
    if len(names) != count:
        raise ValueError(f"{checkpoint} has {count} selection weights but names {len(names)} specialists in its "
                         "_extra_state; the checkpoint was not written by an EoS-FM encoder of this package.")
    return names


def _top_k(args: argparse.Namespace) -> int | None:
    if args.top_k is not None:
        return args.top_k
    from eos_pangaea.commands.prune import read_encoder_settings

    path = args.run_config or args.checkpoint.parent / "configs" / "config.yaml"
    if not path.is_file():
        return None
    return read_encoder_settings(args.checkpoint, path).get("top_k")

"""``eos-pangaea leaderboard``: rank PANGAEA runs by Avg DTB.

Runs are ranked alone or against Table 2 or 3 of the EoS-FM paper (arXiv 2511.21523).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

REFERENCE_CHOICES = ("table2", "table3", "none")
FORMAT_CHOICES = ("text", "markdown", "csv", "latex", "json")
# Label fraction of each reference table, used to pick a default table.
TABLE_LABEL_FRACTIONS = {"table2": 1.0, "table3": 0.1}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``leaderboard`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "leaderboard",
        help="rank PANGAEA experiment folders by Avg DTB",
        description=(
            "Read PANGAEA experiment folders (or work_dirs that contain them), average each "
            "encoder's test metric over seeds and rank by Avg DTB (average distance to the best "
            "value per dataset), alone or against Table 2 (all labels) or Table 3 (10 % labels) "
            "of the EoS-FM paper. Runs that cannot be ranked are listed in the report."
        ),
    )

    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", type=Path, help="experiment folder or PANGAEA work_dir")
    parser.add_argument(
        "--reference",
        choices=REFERENCE_CHOICES,
        default=None,
        help="reference table to rank against: table2 (all labels), table3 (10%% labels) or none "
        "(default: the table whose label fraction matches --labels or, without --labels, the runs' "
        "single label fraction; table2 when there are no runs or they mix fractions)",
    )
    parser.add_argument(
        "--labels",
        type=float,
        default=None,
        metavar="FRACTION",
        help="keep runs with this limited_label_train, for example 1.0 or 0.1",
    )

    parser.add_argument("--format", choices=FORMAT_CHOICES, default="text", help="output format (default: text)")
    parser.add_argument("--output", type=Path, default=None, metavar="FILE", help="write the table to FILE instead of standard output")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE", help="save a figure of Avg DTB and per-dataset distances (.png, .pdf, .svg)")

    parser.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="bootstrap resamples over seeds for confidence intervals of Avg DTB (default: 0, none)",
    )
    parser.add_argument("--confidence", type=float, default=0.95, help="level of the bootstrap intervals (default: 0.95)")
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the bootstrap's random generator (default: 0)")

    parser.add_argument(
        "--use-inferred",
        action="store_true",
        help="fill reference cells missing from the paper's text with the values its printed Avg DTB implies, marked as inferred",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the leaderboard from parsed arguments, print or write it, and save the figure."""
    from eos_pangaea.results.leaderboard import build_leaderboard
    from eos_pangaea.results.reference import load_reference_table
    from eos_pangaea.results.render import render
    from eos_pangaea.results.runs import read_runs

    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap {args.bootstrap} is negative; pass 0 for no intervals or a count such as 1000")
    runs, notes = read_runs(args.run_dirs) if args.run_dirs else ([], [])
    reference_name = _choose_reference(args.reference, args.labels, runs)
    reference = None if reference_name == "none" else load_reference_table(reference_name, use_inferred=args.use_inferred)

    leaderboard = build_leaderboard(
        runs,
        reference=reference,
        label_fraction=args.labels,
        bootstrap=args.bootstrap,
        confidence=args.confidence,
        random_seed=args.random_seed,
        notes=notes,
    )

    text = render(leaderboard, args.format)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        logger.info("Wrote %s leaderboard to %s", args.format, args.output)
    if args.format == "csv" or args.output is not None:
        # CSV has no room for report lines, and a file is not read on the terminal.
        for note in leaderboard.notes:
            logger.warning("%s", note)

    if args.plot is not None:
        from eos_pangaea.results.plot import plot_leaderboard

        plot_leaderboard(leaderboard, args.plot)
    return 0


def _choose_reference(reference: str | None, labels: float | None, runs: list) -> str:
    """Pick the table whose label fraction matches --labels, or else the runs' single fraction."""
    from eos_pangaea.results.runs import COMPLETE

    if reference is not None:
        return reference
    if labels is None:
        fractions = {run.label_fraction for run in runs if run.status == COMPLETE}
        labels = fractions.pop() if len(fractions) == 1 else 1.0
    for name, fraction in TABLE_LABEL_FRACTIONS.items():
        if abs(labels - fraction) < 1e-6:
            return name
    return "none"

"""``eos-pangaea plot-scaling``: test metric against the number of selected specialists.

This is Fig. 4 of EoS-FM (Adorni et al., arXiv 2511.21523). There, on HLS
Burn Scars, mIoU rises from 76 % with 2 specialists to 84 % with 19, not
monotonically. The command draws the same plot from PANGAEA experiment
folders, such as those ``scripts/scaling_study.py`` writes.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections import defaultdict
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plot-scaling`` sub-command."""
    parser = subparsers.add_parser(
        "plot-scaling",
        help="plot the test metric against top_k from PANGAEA runs",
        description=(
            "Read PANGAEA experiment folders of EoS-FM runs (or folders that contain them), take "
            "each run's top_k from configs/config.yaml (top_k null counts as every specialist that "
            "sees the dataset) and its final test metric from its log, and plot the metric against k, "
            "one line per dataset, averaged over seeds. Runs without a test result are listed and skipped."
        ),
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="experiment folder or PANGAEA work_dir")
    parser.add_argument("-o", "--output", type=Path, default=Path("scaling.png"), metavar="FILE",
                        help="figure to write (.png, .pdf, .svg; default: scaling.png)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Collect the points, print them and draw the figure."""
    from eos_pangaea.results.runs import read_runs

    records, notes = read_runs(args.run_dirs)
    for note in notes:
        print(f"note: {note}")
    points: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.status != "complete" or record.value is None:
            print(f"skipped {record.path}: {record.status}; " + "; ".join(record.problems or ["no final test metric"]))
            continue
        k = run_top_k(record.path)
        if k is None:
            print(f"skipped {record.path}: not an EoS-FM run (no eos_pangaea encoder in configs/config.yaml)")
            continue
        points[(record.dataset_name or "unknown dataset", record.metric or "metric")][k].append(record.value)
    if not points:
        raise ValueError("No complete EoS-FM run found under " + ", ".join(map(str, args.run_dirs))
                         + "; pass experiment folders whose train.log-0 ends with a [test] block.")

    _print_table(points)
    _plot(points, args.output)
    print(f"Wrote {args.output}")
    return 0


def run_top_k(run_dir: Path) -> int | None:
    """Return the number of specialists a run selected, or ``None`` for a run of another encoder.

    ``top_k: null``, or a ``top_k`` above the number of specialists that can
    see the dataset's bands, counts as that number.
    """
    from eos_pangaea.bands import plan_streams
    from eos_pangaea.commands.prune import read_encoder_settings
    from eos_pangaea.specialists import load_specialist_specs

    try:
        settings = read_encoder_settings(run_dir / "checkpoint.pth", run_dir / "configs" / "config.yaml")
    except (FileNotFoundError, ValueError) as error:
        logger.debug("%s: %s", run_dir, error)
        return None
    top_k = settings.get("top_k")
    if "input_bands" not in settings:
        # Without the bands the usable count is unknown; an explicit top_k is still the count run.
        return None if top_k is None else int(top_k)
    names = settings.get("specialists")
    specs = load_specialist_specs(None if names is None else list(names))
    streams = plan_streams([(s.name, s.bands) for s in specs], settings["input_bands"],
                           dataset=settings.get("dataset_name"), band_labels=settings.get("band_labels") or {},
                           missing_bands=settings.get("missing_bands") or "skip")
    usable = len({stream.specialist for stream in streams})
    return usable if top_k is None else min(int(top_k), usable)


def _print_table(points: dict[tuple[str, str], dict[int, list[float]]]) -> None:
    print(f"{'dataset':<22} {'metric':<6} {'k':>3} {'runs':>4} {'mean':>8} {'std':>7}")
    for (dataset, metric), by_k in sorted(points.items()):
        for k, values in sorted(by_k.items()):
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{dataset:<22} {metric:<6} {k:>3} {len(values):>4} {statistics.mean(values):>8.2f} {spread:>7.2f}")


def _plot(points: dict[tuple[str, str], dict[int, list[float]]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    metrics = sorted({metric for _, metric in points})
    for (dataset, metric), by_k in sorted(points.items()):
        ks = sorted(by_k)
        means = [statistics.mean(by_k[k]) for k in ks]
        spreads = [statistics.stdev(by_k[k]) if len(by_k[k]) > 1 else 0.0 for k in ks]
        axis.errorbar(ks, means, yerr=spreads, marker="o", capsize=3, label=f"{dataset} ({metric})")
    axis.set_xlabel("selected specialists k (top_k)")
    axis.set_ylabel("test " + " / ".join(metrics))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=150)
    plt.close(figure)

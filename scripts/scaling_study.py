"""Run one PANGAEA experiment per top_k value, as in Fig. 4 of EoS-FM (arXiv 2511.21523).

Each k is a separate PANGAEA process, started one after the other. A Hydra
multirun (``-m encoder.top_k=2,4,...``) does not work: PANGAEA's ``run.py``
creates a torch.distributed process group in every job and never destroys
it, so the second job of a multirun fails when it creates its own.

On a GPU machine each run is ``torchrun --nproc_per_node=1 pangaea/run.py``
started in the PANGAEA checkout; with ``--cpu`` it is ``eos-pangaea run-cpu``.
Every run writes its own experiment folder under ``work_dir``; plot the study
with ``eos-pangaea plot-scaling WORK_DIR``.

Example (HLS Burn Scars with UperNet, the setting of that figure)::

    python3 scripts/scaling_study.py --pangaea-root ~/pangaea-bench --ks 2,4,6,9,13,19 \\
        --work-dir work_dir/scaling -- dataset=hlsburnscars decoder=seg_upernet \\
        task=segmentation preprocessing=seg_default criterion=cross_entropy \\
        dataset.root_path=/data/hlsburnscars encoder.selection_warmup_steps=1000

Everything after ``--`` is passed to every run as Hydra overrides.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("scaling_study")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study and return 0 when every run succeeded."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ks = _parse_ks(args.ks)
    failed = []
    for k in ks:
        command = build_command(k, args)
        logger.info("top_k=%d: %s", k, shlex.join(command))
        if args.dry_run:
            continue
        completed = subprocess.run(command, cwd=args.pangaea_root, check=False)
        if completed.returncode != 0:
            logger.error("top_k=%d failed with exit status %d", k, completed.returncode)
            failed.append(k)
            if not args.keep_going:
                break
    if failed:
        logger.error("Failed runs: top_k=%s; rerun them with --ks %s", failed, ",".join(map(str, failed)))
        return 1
    logger.info("Done. Plot with: eos-pangaea plot-scaling %s", args.work_dir)
    return 0


def build_command(k: int, args: argparse.Namespace) -> list[str]:
    """Return the command line of the run with ``encoder.top_k=k``."""
    overrides = [
        f"encoder={args.encoder}",
        f"encoder.top_k={k}",
        f"work_dir={args.work_dir.resolve()}",
        *args.overrides,
    ]
    if args.cpu:
        return ["eos-pangaea", "run-cpu", "--pangaea-root", str(args.pangaea_root), *overrides]
    return ["torchrun", "--nnodes=1", "--nproc_per_node=1", "pangaea/run.py", "--config-name=train", *overrides]


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise SystemExit(f"--ks {text!r} is invalid: {error}; pass comma-separated integers such as 2,4,6") from error
    if not ks or min(ks) < 1:
        raise SystemExit(f"--ks {text!r} is invalid; pass positive integers such as 2,4,6")
    return ks


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, overrides = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Hydra overrides for every run follow a '--'.")
    parser.add_argument("--pangaea-root", type=Path, required=True, metavar="DIR",
                        help="PANGAEA checkout; runs start there, as pangaea/run.py expects")
    parser.add_argument("--ks", default="2,4,6,9,13,19", help="comma-separated top_k values (default: 2,4,6,9,13,19)")
    parser.add_argument("--encoder", default="eos_fm", help="encoder config (default: eos_fm)")
    parser.add_argument("--work-dir", type=Path, default=Path("work_dir") / "scaling", metavar="DIR",
                        help="PANGAEA work_dir that receives every experiment folder (default: work_dir/scaling)")
    parser.add_argument("--cpu", action="store_true", help="run with `eos-pangaea run-cpu` instead of torchrun")
    parser.add_argument("--keep-going", action="store_true", help="continue with the next k after a failed run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)
    if not (args.pangaea_root / "pangaea" / "run.py").is_file():
        parser.error(f"--pangaea-root {args.pangaea_root} has no pangaea/run.py; pass the PANGAEA checkout")
    args.overrides = overrides
    return args


if __name__ == "__main__":
    sys.exit(main())

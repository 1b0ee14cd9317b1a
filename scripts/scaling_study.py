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
    _check_ks(ks, args)
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
    # The runs start in --pangaea-root, so print the absolute work_dir that build_command passes them.
    logger.info("Done. Plot with: eos-pangaea plot-scaling %s", args.work_dir.resolve())
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


def _check_ks(ks: list[int], args: argparse.Namespace) -> None:
    """Reject a k above the number of specialists the runs' encoder config lists."""
    count, source = _specialist_count(args)
    if count is None:
        logger.warning("Cannot count the specialists of encoder %s (%s); --ks is not checked", args.encoder, source)
        return
    too_large = [k for k in ks if k > count]
    if too_large:
        raise SystemExit(f"--ks {args.ks!r} is invalid: top_k {too_large} exceeds the {count} specialists of "
                         f"{source}; pass values from 1 to {count}")


def _specialist_count(args: argparse.Namespace) -> tuple[int | None, str]:
    """Return the number of specialists the runs build and where it comes from.

    The source is an ``encoder.specialists=[...]`` override, else the encoder
    config in this package or in the PANGAEA checkout. ``specialists: null``
    means every specialist of the weights manifest.
    """
    import yaml

    from eos_pangaea.specialists import load_specialist_specs

    for override in reversed(args.overrides):
        key, _, value = override.partition("=")
        if key.lstrip("+") == "encoder.specialists":
            names = yaml.safe_load(value)
            if names is None:
                return len(load_specialist_specs()), f"{override} (every specialist of the manifest)"
            return (len(names), override) if isinstance(names, list) else (None, f"{override} is not a list")

    import eos_pangaea.configs

    candidates = [Path(eos_pangaea.configs.__file__).parent / "encoder" / f"{args.encoder}.yaml",
                  args.pangaea_root / "configs" / "encoder" / f"{args.encoder}.yaml"]
    config_path = next((path for path in candidates if path.is_file()), None)
    if config_path is None:
        return None, f"no {args.encoder}.yaml in {candidates[0].parent} or {candidates[1].parent}"
    names = (yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get("specialists")
    if names is None:
        return len(load_specialist_specs()), f"{config_path} (specialists: null, every specialist of the manifest)"
    return len(names), f"{config_path}"


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

"""``eos-pangaea run-cpu`` and ``eos-pangaea demo-data``: PANGAEA on a machine without a GPU.

``run-cpu`` takes the same Hydra overrides as ``torchrun pangaea/run.py`` and
runs PANGAEA's own pipeline on the CPU (see :mod:`eos_pangaea.cpu_run`).
Without overrides it runs the demo job: EoS-FM on Sen1Floods11 tiles cut from
the chip shipped with the package.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_DEMO_ROOT = Path("data") / "eos_pangaea_demo_sen1floods11"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``run-cpu`` and ``demo-data`` sub-commands to ``subparsers``."""
    run = subparsers.add_parser(
        "run-cpu",
        help="run PANGAEA's training and test pipeline on the CPU",
        description=(
            "Run PANGAEA's pangaea/run.py on the CPU (gloo, one process) with the same Hydra "
            "overrides, experiment folder and logs. Without overrides, or with --demo, run EoS-FM "
            "on Sen1Floods11 tiles of the shipped demo chip for 2 epochs; overrides given with "
            "--demo replace the demo's values. Configs come from --pangaea-root, else from "
            "./configs when the current directory is a PANGAEA checkout (contains configs/train.yaml), "
            "else from the checkout PANGAEA is installed from; the log names the folder used. "
            "Outputs go under the current directory: the experiment folder (checkpoints, train.log) "
            "under PANGAEA's work_dir, which is empty by default, so ./<experiment name>/ "
            "(override with work_dir=DIR); Hydra's run folder ./outputs/<date>/<time>/ (override "
            "with hydra.run.dir=DIR); and for the demo job its dataset in --demo-root."
        ),
        epilog="example: eos-pangaea run-cpu encoder=eos_fm encoder.encoder_weights=SOURCE "
        "dataset=sen1floods11 decoder=seg_upernet task=segmentation preprocessing=seg_default "
        "criterion=cross_entropy dataset.root_path=DIR (SOURCE: a weights source, see docs/weights.md)",
    )
    run.add_argument("--pangaea-root", type=Path, default=None, metavar="DIR",
                     help="PANGAEA checkout whose configs/ folder to use (default: the current directory "
                     "if it contains configs/train.yaml, else the checkout PANGAEA is installed from)")
    run.add_argument("--demo", action="store_true", help="run the demo job, with OVERRIDES applied on top")
    run.add_argument("--demo-root", type=Path, default=DEFAULT_DEMO_ROOT, metavar="DIR",
                     help=f"where the demo's dataset folder is built if missing (default: ./{DEFAULT_DEMO_ROOT})")
    run.add_argument("overrides", nargs=argparse.REMAINDER, metavar="OVERRIDES",
                     help="Hydra overrides, as for pangaea/run.py")
    run.set_defaults(func=_run_cpu)

    demo = subparsers.add_parser(
        "demo-data",
        help="lay out a Sen1Floods11 chip as PANGAEA's Sen1Floods11 dataset folder",
        description=(
            "Cut one Sen1Floods11 chip into tiles (training tiles in 8 orientations, the bottom "
            "row held out for validation and test) and write the folder structure PANGAEA's "
            "Sen1Floods11 reader expects. Pass the output folder as dataset.root_path."
        ),
    )
    demo.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to create")
    demo.add_argument("--chip", type=Path, default=None, metavar="DIR",
                      help="folder of one chip's *_S1Hand.tif, *_S2Hand.tif and *_LabelHand.tif "
                      "(default: the shipped 128 x 128 demo chip)")
    demo.add_argument("--tile", type=int, default=64,
                      help="tile size in pixels, at least 32 and at most half the chip's height (default: 64)")
    demo.add_argument("--max-train", type=int, default=200, metavar="N",
                      help="keep at most N training samples, spread evenly over the chip; at least 20, "
                      "which PANGAEA's 10%% stratified subset needs (default: 200, about 14 MB with 64-pixel tiles)")
    demo.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    demo.set_defaults(func=_demo_data)


def _run_cpu(args: argparse.Namespace) -> int:
    from eos_pangaea.cpu_run import DEMO_OVERRIDES, merge_overrides, run_cpu

    overrides = list(args.overrides)
    if args.demo or not overrides:
        demo = list(DEMO_OVERRIDES)
        if not any(o.startswith("dataset.root_path=") for o in overrides):
            demo.append(f"dataset.root_path={_demo_dataset(args.demo_root).resolve()}")
        overrides = merge_overrides(demo, overrides)
        logger.info("Demo job: %s", " ".join(overrides))
    run_cpu(overrides, pangaea_root=args.pangaea_root)
    return 0


def _demo_dataset(root: Path) -> Path:
    from eos_pangaea.demo_data import build_sen1floods11_layout

    if (root / "v1.1" / "splits").is_dir():
        logger.info("Using the demo dataset at %s", root)
        return root
    return build_sen1floods11_layout(root).root


def _demo_data(args: argparse.Namespace) -> int:
    from eos_pangaea.demo_data import build_sen1floods11_layout

    layout = build_sen1floods11_layout(args.out_dir, args.chip, tile=args.tile, max_train=args.max_train,
                                       overwrite=args.overwrite)
    print(f"{layout.root}: {layout.splits['train']} train, {layout.splits['val']} val, "
          f"{layout.splits['test']} test samples; pass dataset.root_path={layout.root.resolve()}")
    if layout.splits["train"] < layout.available_train:
        print(f"The chip gives {layout.available_train} training samples at --tile {args.tile}; "
              f"--max-train {args.max_train} kept {layout.splits['train']}.")
    return 0

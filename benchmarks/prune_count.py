"""Print the parameter count of EoS-FM pruned to top-k on a dataset's bands.

The count depends on which k specialists are kept, because the fusion's
input width grows with the number of streams (band routes) each kept
specialist has. The script prunes one ensemble per choice: the six kept
by tie-breaking at initialisation (all weights equal), and the choices with
the fewest and the most streams. Run from the repository root:

    python3 benchmarks/prune_count.py --top-k 6
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

from eos_pangaea.ensemble import EoSFM
from eos_pangaea.pruning import count_parameters, prune_ensemble
from eos_pangaea.specialists import build_specialists, load_specialist_specs

SEN1FLOODS11_BANDS = {
    "optical": ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"],
    "sar": ["VV", "VH"],
}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top-k", type=int, default=6, help="specialists kept (default: 6, as eos_fm_small.yaml)")
    args = parser.parse_args(argv)
    logging.getLogger("eos_pangaea").setLevel(logging.WARNING)

    torch.manual_seed(0)
    model = EoSFM(build_specialists(load_specialist_specs()), SEN1FLOODS11_BANDS, dataset="Sen1Floods11",
                  top_k=args.top_k, warmup_steps=1).eval()
    full = count_parameters(model)
    print(f"Sen1Floods11 bands (13 optical + 2 SAR), {len(model.specialists)} specialists, {len(model.streams)} streams")
    print(f"unpruned: {full['total']:,} parameters ({full['specialists']:,} in specialists, {full['head']:,} in head)")

    eligible = [i for i in range(len(model.specialists)) if model._streams_of[i]]
    by_streams = sorted(eligible, key=lambda i: (len(model._streams_of[i]), i))
    choices = {
        "tie-break at initialisation": model.selection.selected(),
        "fewest streams": by_streams[:args.top_k],
        "most streams": by_streams[-args.top_k:],
    }
    print(f"{'kept (top_k=' + str(args.top_k) + ')':<30} {'streams':>7} {'parameters':>12} {'specialists':>12} {'head':>10}")
    for label, keep in choices.items():
        pruned = prune_ensemble(model, keep)
        counts = count_parameters(pruned)
        print(f"{label:<30} {len(pruned.streams):>7} {counts['total']:>12,} {counts['specialists']:>12,} "
              f"{counts['head']:>10,}")
        print(f"{'':<30} {', '.join(s.name for s in pruned.specialists)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure what EoS-FM's efficiency claims rest on, as ratios measured side by side.

One run builds the 21 specialists of the shipped manifest once (random
weights, seed 0) and prints, with the hardware and torch version:

1. overhead: ensemble forward at k = N over the summed standalone forward
   times of the same specialists on the same routed inputs;
2. scaling: forward time at k over forward time at k = N, on an RGB input
   where every specialist has exactly one stream;
3. memory: peak memory of one training step over peak memory of inference,
   encoder plus UperNet decoder, each measured in a fresh process;
4. execution strategies: each strategy's time over the plain
   one-call-per-stream loop, with the largest feature difference from it.

Times are medians of ``--repeats`` round-robin repeats after ``--warmup``
unmeasured rounds: every case in a table runs once per round, so machine
noise hits all of them alike. On CPU the default clock is the process's CPU
time (``time.process_time``). Other processes on a shared machine inflate it
far less than wall-clock time, which ``--clock wall`` measures instead. Run
from the repository root:

    python3 benchmarks/bench_ensemble.py --threads 1

This is a benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from eos_pangaea.ensemble import EoSFM
from eos_pangaea.execution import PLAIN, ExecutionStrategy
from eos_pangaea.specialists import Specialist, build_specialists, load_specialist_specs

logger = logging.getLogger("bench_ensemble")

RGB_BANDS = {"optical": ["B4", "B3", "B2"]}
SEN1FLOODS11_BANDS = {
    "optical": ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"],
    "sar": ["VV", "VH"],
}
# Specialists with three streams each on Sen1Floods11's bands (rgb, ir_r_g and
# sar_pseudo_rgb routes), for the batched-streams comparison.
MULTI_STREAM_SPECIALISTS = ("eurosat", "bigearthnet-rgb", "sen12ms-rgb", "deepglobe-lcc")
SMALL_TOP_K = 6  # the EoS-FM Small configuration

# Float32 strategies must match the plain loop within these bounds (bfloat16: BF16_RTOL only).
FLOAT_RTOL = 1e-4
FLOAT_ATOL = 1e-4
BF16_RTOL = 5e-2


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement and print the report."""
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("eos_pangaea").setLevel(logging.WARNING)  # routing notes for every ensemble built
    device = torch.device(args.device)
    if args.clock is None:
        args.clock = "cpu" if device.type == "cpu" else "wall"
    if args.clock == "cpu" and device.type != "cpu":
        raise ValueError(f"--clock cpu measures CPU time and misses GPU work; use --clock wall with --device {device}")

    print(_header(args, device))
    torch.manual_seed(0)
    specialists = build_specialists(load_specialist_specs())
    for specialist in specialists:
        specialist.to(device)

    rgb = {"optical": torch.randn(args.batch, 3, args.size, args.size, device=device)}
    overhead_and_scaling(specialists, rgb, args)
    strategies_single_stream(specialists, rgb, args)
    strategies_multi_stream(specialists, args)
    if not args.skip_memory:
        memory_ratios(args)
    print(f"\nload average at the end (1, 5, 15 min): {_load_average()}")
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every process (default: 1)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    parser.add_argument("--size", type=int, default=224, help="input height and width in pixels (default: 224)")
    parser.add_argument("--repeats", type=int, default=7, help="measured rounds per table (default: 7)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds before them (default: 1)")
    parser.add_argument("--ks", default="1,2,4,9,18", help="top-k values of the scaling table (default: 1,2,4,9,18)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="cpu: process CPU time (default on CPU); wall: wall-clock time (default on GPU)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the training/inference memory ratio")
    parser.add_argument("--memory-probe", choices=("train", "infer"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-bands", choices=("rgb", "sen1floods11"), default="sen1floods11", help=argparse.SUPPRESS)
    parser.add_argument("--probe-top-k", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _header(args: argparse.Namespace, device: torch.device) -> str:
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{_cpu_name()}, {args.threads} threads (torch.set_num_threads)"
    return "\n".join([
        "EoS-FM efficiency benchmark",
        f"hardware: {hardware}",
        f"python {platform.python_version()}, torch {torch.__version__}, device {device}",
        f"input: batch {args.batch}, {args.size} x {args.size}; medians of {args.repeats} round-robin repeats "
        f"after {args.warmup} warm-up round(s); clock: {args.clock}",
        f"load average at the start (1, 5, 15 min): {_load_average()}",
    ])


def _load_average() -> str:
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------- timing


def time_round_robin(cases: Mapping[str, Callable[[], object]], args: argparse.Namespace) -> dict[str, float]:
    """Return the median seconds of each case, running every case once per round."""
    device = torch.device(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    samples: dict[str, list[float]] = {name: [] for name in cases}
    warmup, repeats = args.warmup, args.repeats
    for round_index in range(warmup + repeats):
        for name, case in cases.items():
            _synchronize(device)
            start = clock()
            with torch.no_grad():
                case()
            _synchronize(device)
            if round_index >= warmup:
                samples[name].append(clock() - start)
        logger.info("  round %d/%d done", round_index + 1, warmup + repeats)
    for name, values in samples.items():
        SPREADS[name] = _spread(values)
    return {name: statistics.median(values) for name, values in samples.items()}


# Interquartile range over median of every timed case, by case name, for the report.
SPREADS: dict[str, float] = {}


def _spread(values: Sequence[float]) -> float:
    if len(values) < 4:
        return (max(values) - min(values)) / statistics.median(values)
    quartiles = statistics.quantiles(values, n=4)
    return (quartiles[2] - quartiles[0]) / statistics.median(values)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ensemble(
    specialists: Sequence[Specialist],
    input_bands: Mapping[str, Sequence[str]],
    top_k: int | None = None,
    execution: ExecutionStrategy = PLAIN,
) -> EoSFM:
    """Build an ensemble sharing the given specialists, with distinct selection weights."""
    model = EoSFM(list(specialists), input_bands, top_k=top_k, warmup_steps=1, execution=execution)
    with torch.no_grad():
        # Decreasing weights: top-k keeps the first k eligible specialists.
        model.selection.weight.copy_(torch.linspace(2.0, 1.0, len(specialists)))
    return model.to(next(specialists[0].parameters()).device).eval()


# ---------------------------------------------------------------- ratios 1 and 2


def overhead_and_scaling(specialists: Sequence[Specialist], x: dict[str, torch.Tensor], args: argparse.Namespace) -> None:
    """Print ratio 1 (ensemble over standalone) and ratio 2 (time at k over time at N)."""
    full = _ensemble(specialists, RGB_BANDS)
    n = len(full.selection.selected())
    ks = sorted({int(k) for k in args.ks.split(",") if int(k) < n} | {n})
    models = {k: _ensemble(specialists, RGB_BANDS, top_k=k) for k in ks}

    stacked = full.adapter.stack_input(x)
    routed = [(full.specialists[s.specialist], full.adapter.gather(stacked, i)) for i, s in enumerate(full.streams)]
    if any(len(full._streams_of[i]) != 1 for i in full.selection.selected()):
        raise RuntimeError("The RGB input must give every specialist exactly one stream")

    def standalone() -> None:
        for module, routed_input in routed:
            module(routed_input)

    cases: dict[str, Callable[[], object]] = {"standalone specialists": standalone}
    for k, model in models.items():
        cases[f"ensemble k={k}"] = lambda model=model: model(x)
    default = _ensemble(specialists, RGB_BANDS, execution=ExecutionStrategy.for_device(args.device))
    cases["ensemble k=N, device default"] = lambda: default(x)
    logger.info("Ratios 1 and 2: %d cases", len(cases))
    times = time_round_robin(cases, args)

    full_time = times[f"ensemble k={n}"]
    print(f"\n## Ratio 1: overhead of routing, normalisation, selection and fusion (RGB input, N = {n})")
    standalone_time = times["standalone specialists"]
    default_time = times["ensemble k=N, device default"]
    print(f"sum of standalone specialist forwards on the routed inputs: {standalone_time:.3f} s "
          f"(IQR {SPREADS['standalone specialists']:.0%})")
    print(f"ensemble forward at k = N, plain loop:                      {full_time:.3f} s (IQR {SPREADS[f'ensemble k={n}']:.0%})")
    print(f"ensemble forward at k = N, device default {ExecutionStrategy.for_device(args.device)}: "
          f"{default_time:.3f} s (IQR {SPREADS['ensemble k=N, device default']:.0%})")
    print(f"ratio 1 = {full_time / standalone_time:.3f} (plain loop), {default_time / standalone_time:.3f} "
          "(device default)   target <= 1.10")

    print(f"\n## Ratio 2: forward time at k over forward time at k = N = {n} (RGB input, one stream each)")
    print(f"{'k':>3} {'specialists run':>16} {'time (s)':>9} {'IQR':>5} {'ratio 2':>8} {'k/N + 0.05':>11}  met")
    for k in ks:
        ran = len(models[k].selection.selected())
        ratio = times[f"ensemble k={k}"] / full_time
        bound = k / n + 0.05
        print(f"{k:>3} {ran:>16} {times[f'ensemble k={k}']:>9.3f} {SPREADS[f'ensemble k={k}']:>5.0%} {ratio:>8.3f} "
              f"{bound:>11.3f}  {'yes' if ratio <= bound else 'no'}")


# ---------------------------------------------------------------- ratio 4


def strategies_single_stream(specialists: Sequence[Specialist], x: dict[str, torch.Tensor], args: argparse.Namespace) -> None:
    """Print ratio 4 for strategies that matter with one stream per specialist (RGB, k = N)."""
    device = torch.device(args.device)
    strategies = {
        "plain loop": PLAIN,
        "channels_last": ExecutionStrategy(batch_streams=False, channels_last=True),
        "fold_head": ExecutionStrategy(batch_streams=False, fold_head=True),
        "stack_specialists (vmap)": ExecutionStrategy(batch_streams=False, stack_specialists=True),
        "bf16_autocast": ExecutionStrategy(batch_streams=False, bf16_autocast=True),
        "stack + bf16_autocast": ExecutionStrategy(batch_streams=False, stack_specialists=True, bf16_autocast=True),
    }
    model = _ensemble(specialists, RGB_BANDS)
    _strategy_table(f"RGB input, k = N = {len(model.selection.selected())}, one stream per specialist",
                    model, x, strategies, args, device)


def strategies_multi_stream(specialists: Sequence[Specialist], args: argparse.Namespace) -> None:
    """Print ratio 4 for batched streams: Sen1Floods11 bands, specialists with three streams each."""
    device = torch.device(args.device)
    chosen = [s for s in specialists if s.name in MULTI_STREAM_SPECIALISTS]
    model = _ensemble(chosen, SEN1FLOODS11_BANDS)
    x = {
        "optical": torch.randn(args.batch, 13, args.size, args.size, device=device),
        "sar": torch.randn(args.batch, 2, args.size, args.size, device=device),
    }
    strategies = {
        "plain loop": PLAIN,
        "batch_streams": ExecutionStrategy(batch_streams=True),
        "batch_streams + stack": ExecutionStrategy(batch_streams=True, stack_specialists=True),
        "batch_streams + channels_last": ExecutionStrategy(batch_streams=True, channels_last=True),
        "batch_streams + bf16_autocast": ExecutionStrategy(batch_streams=True, bf16_autocast=True),
    }
    _strategy_table(f"Sen1Floods11 bands, {len(chosen)} specialists x {len(model.streams) // len(chosen)} streams, k = N",
                    model, x, strategies, args, device)


def _strategy_table(
    title: str,
    model: EoSFM,
    x: dict[str, torch.Tensor],
    strategies: Mapping[str, ExecutionStrategy],
    args: argparse.Namespace,
    device: torch.device,
) -> None:
    with torch.no_grad():
        model.execution = PLAIN
        reference = model(x)
        errors = {}
        for name, strategy in strategies.items():
            model.execution = strategy
            errors[name] = _relative_errors(model(x), reference)

    def run(strategy: ExecutionStrategy) -> None:
        model.execution = strategy
        model(x)

    logger.info("Ratio 4 (%s): %d cases", title, len(strategies))
    times = time_round_robin({n: (lambda s=s: run(s)) for n, s in strategies.items()}, args)
    plain = times["plain loop"]
    print(f"\n## Ratio 4: plain loop time over strategy time ({title})")
    print(f"{'strategy':<30} {'time (s)':>9} {'IQR':>5} {'speed-up':>9} {'max rel. error':>15}  within tolerance")
    for name, strategy in strategies.items():
        tolerance = BF16_RTOL if strategy.bf16_autocast else FLOAT_RTOL
        error = errors[name]
        print(f"{name:<30} {times[name]:>9.3f} {SPREADS[name]:>5.0%} {plain / times[name]:>9.3f} {error:>15.2e}  "
              f"{'yes' if error <= tolerance else 'NO'} (<= {tolerance:g})")


def _relative_errors(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """Return the largest per-level max |a - e| / (max |e| + FLOAT_ATOL)."""
    return max(
        float((a.float() - e.float()).abs().max() / (e.float().abs().max() + FLOAT_ATOL))
        for a, e in zip(actual, expected)
    )


# ---------------------------------------------------------------- ratio 3


def memory_ratios(args: argparse.Namespace) -> None:
    """Print ratio 3, each measurement in a fresh process."""
    configs = [("sen1floods11", SMALL_TOP_K), ("rgb", 0)]
    print("\n## Ratio 3: peak memory of one training step over peak memory of inference (encoder + UperNet)")
    print("Each figure is one fresh process: peak resident set (VmHWM, reset after building the model) "
          "over two passes minus the resident set after imports.")
    print(f"{'input':<26} {'decoder':<11} {'train (MiB)':>12} {'infer (MiB)':>12} {'ratio 3':>8} "
          f"{'activations train/infer (MiB)':>30}")
    for bands, top_k in configs:
        results = {mode: _probe(args, mode, bands, top_k) for mode in ("train", "infer")}
        train, infer = results["train"], results["infer"]
        label = f"{bands}, k={top_k or 'N'} ({train['streams']} streams)"
        print(f"{label:<26} {train['decoder']:<11} {train['total_mib']:>12.0f} {infer['total_mib']:>12.0f} "
              f"{train['total_mib'] / infer['total_mib']:>8.3f} "
              f"{train['activations_mib']:>14.0f} / {infer['activations_mib']:<14.0f}")
        print(f"{'':<26} parameters: specialists {train['specialist_params'] / 1e6:.1f} M, head "
              f"{train['head_params'] / 1e6:.2f} M, decoder {train['decoder_params'] / 1e6:.1f} M; "
              f"model build {train['build_mib']:.0f} MiB")
        # float32 gradients plus AdamW's two moments: 12 bytes per trained parameter.
        optimizer_mib = 12 * train["trainable_params"] / 2**20
        print(f"{'':<26} gradients + AdamW moments of the {train['trainable_params'] / 1e6:.1f} M trained "
              f"parameters: {optimizer_mib:.0f} MiB; train without them / infer: "
              f"{(train['total_mib'] - optimizer_mib) / infer['total_mib']:.3f}")
    print("target: ratio 3 <= 1.5")


def _probe(args: argparse.Namespace, mode: str, bands: str, top_k: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", mode, "--probe-bands", bands,
               "--probe-top-k", str(top_k), "--threads", str(args.threads), "--batch", str(args.batch),
               "--size", str(args.size), "--device", args.device]
    logger.info("Ratio 3: %s probe, %s input, top_k=%s", mode, bands, top_k or "N")
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"Memory probe {mode} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def memory_probe(args: argparse.Namespace) -> dict:
    """Measure one training step or one inference pass in this (fresh) process.

    Memory is the resident set read from ``/proc/self/status``. The peak
    (``VmHWM``) is reset right before the measured passes by writing ``5``
    to ``/proc/self/clear_refs``, so the transient peak of building the
    model does not count. The figure is the peak over two passes (the
    optimiser allocates its state in the first) minus the resident set
    after imports, so it counts weights, gradients, optimiser state and
    activations, like ``torch.cuda.max_memory_allocated`` on a GPU, but not
    the interpreter and libraries. ``ru_maxrss`` cannot be used: Linux
    keeps the parent's peak in it across fork and exec.
    """
    baseline = _memory_mib("VmRSS")
    input_bands = RGB_BANDS if args.probe_bands == "rgb" else SEN1FLOODS11_BANDS
    torch.manual_seed(0)
    ensemble = EoSFM(load_specialist_specs(), input_bands, top_k=args.probe_top_k or None, warmup_steps=1,
                     execution="auto", specialists_in_state_dict=False)
    if args.probe_top_k:
        with torch.no_grad():
            ensemble.selection.weight.copy_(torch.linspace(2.0, 1.0, len(ensemble.specialists)))
        ensemble.selection.steps_seen.fill_(1)  # past the warm-up: only the top k run
    decoder, decoder_name = _decoder(ensemble)
    device = torch.device(args.device)
    decoder.to(device)
    build = _memory_mib("VmRSS")

    # SegUPerNet takes (B, C, T, H, W) and passes time step 0 to the encoder.
    x = {m: torch.randn(args.batch, len(b), 1, args.size, args.size, device=device) for m, b in input_bands.items()}
    target = torch.randint(0, 2, (args.batch, args.size, args.size), device=device)
    inputs = _memory_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    if args.memory_probe == "train":
        decoder.train()
        optimizer = torch.optim.AdamW([p for p in decoder.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(decoder(x, (args.size, args.size)), target)
            loss.backward()
            optimizer.step()
    else:
        decoder.eval()
        with torch.no_grad():
            for _ in range(2):
                decoder(x, (args.size, args.size))
    peak = _memory_mib("VmHWM")

    specialist_params = sum(p.numel() for p in ensemble.specialists.parameters())
    return {
        "mode": args.memory_probe,
        "decoder": decoder_name,
        "streams": sum(len(ensemble._streams_of[i]) for i in ensemble.selection.selected()),
        "total_mib": peak - baseline,
        "activations_mib": peak - inputs,
        "build_mib": build - baseline,
        "specialist_params": specialist_params,
        "head_params": sum(p.numel() for p in ensemble.parameters()) - specialist_params,
        "decoder_params": sum(p.numel() for n, p in decoder.named_parameters() if not n.startswith("encoder.")),
        "trainable_params": sum(p.numel() for p in decoder.parameters() if p.requires_grad),
    }


def _memory_mib(field: str) -> float:
    """Return a ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    raise RuntimeError(f"/proc/self/status has no {field}; ratio 3 needs Linux, pass --skip-memory elsewhere")


def _decoder(ensemble: EoSFM) -> tuple[torch.nn.Module, str]:
    """Wrap the ensemble in PANGAEA's SegUPerNet (2 classes, 512 channels, frozen protocol)."""
    try:
        from pangaea.decoders.upernet import SegUPerNet
    except ImportError as error:
        raise RuntimeError(f"Ratio 3 needs PANGAEA's SegUPerNet ({error}); install PANGAEA or pass --skip-memory") from error

    encoder = _PangaeaStyleEncoder(ensemble)
    decoder = SegUPerNet(encoder=encoder, num_classes=2, finetune=False, channels=512)
    return _replace_sync_batchnorm(decoder), "SegUPerNet"


class _PangaeaStyleEncoder(torch.nn.Module):
    """The attributes SegUPerNet reads, around the ensemble, with the adapter's frozen-protocol behaviour.

    ``parameters()`` yields only the specialists, so SegUPerNet's
    ``finetune=False`` freezing leaves the head trainable, and the head runs
    with gradients in training even inside the decoder's ``torch.no_grad()``.
    """

    def __init__(self, ensemble: EoSFM) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.output_layers = list(range(len(ensemble.out_channels)))
        self.output_dim = ensemble.out_channels
        self.pyramid_output = True
        self.multi_temporal = False
        self.multi_temporal_output = False

    def parameters(self, recurse: bool = True):
        return self.ensemble.specialists.parameters(recurse)

    def forward(self, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        with torch.set_grad_enabled(self.training):
            return self.ensemble(x)


def _replace_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Swap every SyncBatchNorm (which rejects CPU tensors in training) for a BatchNorm2d."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.SyncBatchNorm):
            replacement = torch.nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                               child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            _replace_sync_batchnorm(child)
    return module


if __name__ == "__main__":
    sys.exit(main())

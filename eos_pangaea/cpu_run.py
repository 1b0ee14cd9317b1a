"""Run PANGAEA's own ``pangaea/run.py`` on a machine without a GPU.

PANGAEA's ``run.py`` (commit f20f3d3) needs CUDA and NCCL in four places. This
module patches exactly those, for the duration of one run, then calls the
undecorated ``main`` of ``pangaea.run`` under Hydra with the caller's
overrides. Config composition, datasets, preprocessors, the limited-label
subset, the Trainer, the Evaluator, the experiment folder and its logs are
PANGAEA's, unchanged:

- ``torch.device("cuda", local_rank)`` and ``torch.cuda.set_device`` become
  the CPU device and a no-op;
- ``torch.distributed.init_process_group(backend="nccl")`` becomes a gloo
  group of world size 1 (rendezvous through a temporary file, no TCP store);
- ``DistributedDataParallel(..., device_ids=[local_rank])`` is built without
  device ids, after every ``SyncBatchNorm`` is swapped for a ``BatchNorm2d``
  that shares its parameters and buffers (same state_dict keys), because
  SyncBatchNorm refuses CPU tensors in training;
- ``WeightedCrossEntropy`` keeps its class weights on the CPU instead of
  calling ``.to("cuda")``.

Only the ``torch`` name inside ``pangaea.run`` is replaced (by a proxy that
forwards everything else to torch), so the rest of the process uses torch
unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# The Sen1Floods11 segmentation job that `eos-pangaea run-cpu` runs when given
# no overrides, on the demo chip shipped in eos_pangaea/data/demo. It keeps the
# specialists randomly initialised because the manifest does not yet record the
# published files' names on the hub; pass encoder.encoder_weights=SOURCE to use
# real weights (see docs/weights.md).
DEMO_OVERRIDES = (
    "encoder=eos_fm",
    "encoder.encoder_weights=random",
    "dataset=sen1floods11",
    "decoder=seg_upernet",
    "task=segmentation",
    "preprocessing=seg_default",
    "criterion=cross_entropy",
    "dataset.img_size=64",
    "task.trainer.n_epochs=2",
    "task.trainer.eval_interval=1",
    "task.trainer.log_interval=1",
    "batch_size=4",
    "test_batch_size=1",
    "num_workers=0",
    "test_num_workers=0",
)


def run_cpu(overrides: Sequence[str], pangaea_root: str | Path | None = None) -> None:
    """Run PANGAEA's ``run.py`` main on the CPU with Hydra command-line overrides.

    Args:
        overrides: The overrides one would pass to ``pangaea/run.py``, for
            example ``["encoder=eos_fm", "dataset=sen1floods11", ...]``.
        pangaea_root: PANGAEA checkout whose ``configs`` folder to use. By
            default the current directory if it contains
            ``configs/train.yaml``, else the checkout PANGAEA is installed
            from (see :func:`find_config_dir`).

    Raises:
        RuntimeError: PANGAEA is not installed, or ``WORLD_SIZE`` requests
            more than one process.
        FileNotFoundError: No ``configs`` folder was found.
    """
    try:
        import hydra
        import pangaea.run as pangaea_run
    except ModuleNotFoundError as error:
        raise RuntimeError(
            f"PANGAEA is not importable ({error}). Clone https://github.com/VMarsocci/pangaea-bench "
            "and install it with `pip install -e .` from the checkout, as its README says."
        ) from error

    config_dir = find_config_dir(pangaea_root)
    task = getattr(pangaea_run.main, "__wrapped__", None)
    if task is None:
        raise RuntimeError("pangaea.run.main is not a @hydra.main function; this PANGAEA version is not supported.")
    entry = hydra.main(version_base=None, config_path=str(config_dir), config_name="train")(task)

    logger.info("Running pangaea/run.py on the CPU with configs from %s", config_dir)
    with _single_cpu_process(), _cpu_patches(pangaea_run), _argv([sys.argv[0], *overrides]):
        entry()


def find_config_dir(pangaea_root: str | Path | None = None) -> Path:
    """Return the ``configs`` folder of a PANGAEA checkout.

    Args:
        pangaea_root: The checkout. By default the current directory comes
            first when it contains ``configs/train.yaml``, because the README
            asks users to run from the PANGAEA checkout, whose configs may differ
            from the installed one's. The checkout PANGAEA is installed from
            (editable install) comes second.

    Raises:
        FileNotFoundError: The folder has no ``configs/train.yaml``.
    """
    candidates = []
    if pangaea_root is not None:
        candidates.append(Path(pangaea_root))
    else:
        import pangaea

        candidates += [Path.cwd(), Path(pangaea.__file__).resolve().parents[1]]
    for root in candidates:
        if (root / "configs" / "train.yaml").is_file():
            return (root / "configs").resolve()
    raise FileNotFoundError(
        f"No PANGAEA configs/train.yaml under {[str(c) for c in candidates]}. Pass --pangaea-root with "
        "the path of a PANGAEA checkout (the folder that contains configs/), or run from its root."
    )


def merge_overrides(defaults: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """Return ``defaults`` without the keys that ``overrides`` set, followed by ``overrides``.

    Hydra rejects a config group chosen twice, so a user's ``dataset=...``
    must replace a default one rather than follow it.
    """
    given = {_override_key(o) for o in overrides}
    return [d for d in defaults if _override_key(d) not in given] + list(overrides)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def sync_batchnorm_to_batchnorm2d(module: nn.Module) -> nn.Module:
    """Replace every ``SyncBatchNorm`` in ``module`` by a ``BatchNorm2d`` sharing its tensors.

    The replacement contains the same parameter and buffer objects under the
    same names, so the optimiser, checkpoints and ``state_dict`` keys are
    unchanged.

    Returns:
        ``module``, changed in place (or the replacement if ``module`` itself
        is a ``SyncBatchNorm``).
    """
    if isinstance(module, nn.SyncBatchNorm):
        replacement = nn.BatchNorm2d(module.num_features, module.eps, module.momentum,
                                     module.affine, module.track_running_stats,
                                     device=torch.device("meta"))
        replacement._parameters = dict(module._parameters)
        replacement._buffers = dict(module._buffers)
        replacement.train(module.training)
        return replacement
    for name, child in module.named_children():
        converted = sync_batchnorm_to_batchnorm2d(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


@contextlib.contextmanager
def _single_cpu_process() -> Iterator[None]:
    """Set the environment of a one-process torchrun and tear the gloo group down afterwards."""
    world_size = os.environ.get("WORLD_SIZE", "1")
    if world_size != "1":
        raise RuntimeError(f"WORLD_SIZE={world_size}: the CPU runner uses one process; unset WORLD_SIZE "
                           "and run without torchrun.")
    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _cpu_patches(pangaea_run) -> Iterator[None]:
    """Patch the CUDA-only calls of ``pangaea.run`` and ``pangaea.utils.losses``."""
    from pangaea.utils import losses

    rendezvous = tempfile.NamedTemporaryFile(prefix="eos_pangaea_gloo_", delete=False)
    rendezvous.close()
    os.unlink(rendezvous.name)  # gloo's file store creates the file itself.

    def init_process_group(*args, **kwargs):
        # Replaces init_process_group(backend="nccl"): NCCL needs a GPU.
        torch.distributed.init_process_group(backend="gloo", init_method=f"file://{rendezvous.name}",
                                             rank=0, world_size=1)

    def distributed_data_parallel(module, *args, device_ids=None, output_device=None, **kwargs):
        # Replaces DDP(device_ids=[local_rank], ...): CPU modules take no device ids,
        # and SyncBatchNorm rejects CPU tensors in training.
        return nn.parallel.DistributedDataParallel(sync_batchnorm_to_batchnorm2d(module), *args, **kwargs)

    run_torch = _Proxy(torch, {
        # Replaces torch.device("cuda", local_rank) and torch.cuda.set_device(device).
        "device": lambda *args, **kwargs: torch.device("cpu"),
        "cuda": _Proxy(torch.cuda, {"set_device": lambda device: None}),
        "distributed": _Proxy(torch.distributed, {"init_process_group": init_process_group}),
        "nn": _Proxy(nn, {"parallel": _Proxy(nn.parallel, {"DistributedDataParallel": distributed_data_parallel})}),
    })
    saved_torch = pangaea_run.torch
    saved_init = losses.WeightedCrossEntropy.__init__
    pangaea_run.torch = run_torch
    losses.WeightedCrossEntropy.__init__ = _weighted_cross_entropy_init
    try:
        yield
    finally:
        pangaea_run.torch = saved_torch
        losses.WeightedCrossEntropy.__init__ = saved_init
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rendezvous.name)


def _weighted_cross_entropy_init(self, ignore_index: int, distribution: list[float]) -> None:
    # Same as PANGAEA's WeightedCrossEntropy.__init__ without its .to("cuda"):
    # the criterion moves with the batch, and CPU runs have no CUDA device.
    nn.Module.__init__(self)
    self.weights = [1 / w for w in distribution]
    self.loss = nn.CrossEntropyLoss(ignore_index=ignore_index, weight=torch.tensor(self.weights))


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


class _Proxy:
    """Forwards attribute access to ``target`` except for the names in ``overrides``."""

    def __init__(self, target, overrides: dict) -> None:
        self._target = target
        self._overrides = overrides

    def __getattr__(self, name: str):
        overrides = self.__dict__["_overrides"]
        if name in overrides:
            return overrides[name]
        return getattr(self.__dict__["_target"], name)

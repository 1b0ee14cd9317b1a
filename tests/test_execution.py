"""Execution strategies give the plain loop's features and run only the selected specialists."""

from __future__ import annotations

import pytest
import torch

from eos_pangaea import execution
from eos_pangaea.ensemble import EoSFM
from eos_pangaea.execution import PLAIN, ExecutionStrategy
from eos_pangaea.specialists import SpecialistSpec

S2_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
INPUT_BANDS = {"optical": S2_BANDS, "sar": ["VV", "VH"]}

# Three RGB specialists (three streams each on this input: rgb, ir_r_g and
# sar_pseudo_rgb), one IR-R-G specialist (three streams) and one 13-band
# specialist (one stream): two architectures, two stream counts.
SPECS = [
    SpecialistSpec("rgb-a", ("B04", "B03", "B02")),
    SpecialistSpec("rgb-b", ("B04", "B03", "B02")),
    SpecialistSpec("s2-13", tuple(S2_BANDS)),
    SpecialistSpec("irrg", ("B08", "B04", "B03")),
    SpecialistSpec("rgb-c", ("B04", "B03", "B02")),
]

FLOAT_STRATEGIES = {
    "batch_streams": ExecutionStrategy(batch_streams=True),
    "stack_specialists": ExecutionStrategy(batch_streams=True, stack_specialists=True),
    "stack_unbatched": ExecutionStrategy(batch_streams=False, stack_specialists=True),
    "channels_last": ExecutionStrategy(batch_streams=True, channels_last=True),
    "fold_head": ExecutionStrategy(batch_streams=True, fold_head=True),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _ensemble(top_k: int | None = None) -> EoSFM:
    torch.manual_seed(0)
    model = EoSFM(SPECS, INPUT_BANDS, top_k=top_k, warmup_steps=1 if top_k else 0, execution=PLAIN)
    # Distinct weights so that top-k keeps a known set: rgb-a, s2-13, rgb-c.
    with torch.no_grad():
        model.selection.weight.copy_(torch.tensor([3.0, 1.0, 2.5, 0.5, 2.0]))
    # Running statistics away from 0/1, so eval-mode normalisation matters.
    for norms in model.norms.norms:
        for norm in norms:
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "optical": torch.randn(2, 13, 32, 32, generator=generator),
        "sar": torch.randn(2, 2, 32, 32, generator=generator),
    }


def _features(model: EoSFM, strategy: ExecutionStrategy, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    model.execution = strategy
    with torch.no_grad():
        return model(x)


def _assert_close(actual: list[torch.Tensor], expected: list[torch.Tensor], rtol: float, atol: float) -> None:
    assert len(actual) == len(expected)
    for level, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"level {level}: shape {a.shape} != {e.shape}"
        assert a.dtype == e.dtype, f"level {level}: dtype {a.dtype} != {e.dtype}"
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"level {level}: {m}")


@pytest.fixture(scope="module", params=[None, 3], ids=["all", "top3"])
def reference(request: pytest.FixtureRequest) -> tuple[EoSFM, dict, list[torch.Tensor]]:
    """An ensemble, an input and the plain loop's features, shared by the strategy tests."""
    model = _ensemble(request.param)
    x = _inputs()
    return model, x, _features(model, PLAIN, x)


@pytest.mark.parametrize("name", sorted(FLOAT_STRATEGIES))
def test_strategy_matches_plain_loop(reference, name: str) -> None:
    model, x, expected = reference
    actual = _features(model, FLOAT_STRATEGIES[name], x)
    _assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stack", [False, True], ids=["alone", "stacked"])
def test_bf16_close_to_plain(stack: bool) -> None:
    model = _ensemble()
    x = _inputs()
    expected = _features(model, PLAIN, x)
    actual = _features(model, ExecutionStrategy(stack_specialists=stack, bf16_autocast=True), x)
    # bfloat16 keeps 8 mantissa bits; errors compound over four stages.
    for level, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == torch.float32
        relative = float((a - e).norm() / e.norm())
        assert 0 < relative < 5e-2, f"level {level}: relative error {relative:.3g}"


def test_stacked_groups_by_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _ensemble()
    groups: list[list[int]] = []
    run_group = execution._run_group

    def spy(model, members, architecture, routed, dtype=None):
        groups.append(list(members))
        return run_group(model, members, architecture, routed, dtype)

    monkeypatch.setattr(execution, "_run_group", spy)
    _features(model, ExecutionStrategy(stack_specialists=True), _inputs())
    # The 3-channel specialists share an architecture and have three streams each;
    # the 13-band one runs alone.
    assert groups == [[0, 1, 3, 4]]


def test_top_k_runs_only_selected(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _ensemble(top_k=3)
    for name, strategy in {"plain": PLAIN, **FLOAT_STRATEGIES}.items():
        ran: list[int] = []
        original = execution.run_specialist

        def spy_single(model, specialist, stream_ids, routed, strategy, original=original, ran=ran):
            ran.append(specialist)
            return original(model, specialist, stream_ids, routed, strategy)

        run_group = execution._run_group

        def spy_group(model, members, architecture, routed, dtype=None, run_group=run_group, ran=ran):
            ran.extend(members)
            return run_group(model, members, architecture, routed, dtype)

        monkeypatch.setattr(execution, "run_specialist", spy_single)
        monkeypatch.setattr(execution, "_run_group", spy_group)
        _features(model, strategy, _inputs())
        monkeypatch.undo()
        assert sorted(ran) == [0, 2, 4], f"strategy {name} ran {ran}"


def test_stacked_weights_follow_updates() -> None:
    model = _ensemble()
    x = _inputs()
    strategy = ExecutionStrategy(stack_specialists=True)
    _features(model, strategy, x)  # fills the stacked-weight cache
    with torch.no_grad():
        for parameter in model.specialists[1].backbone.parameters():
            parameter.mul_(0.5)
    _assert_close(_features(model, strategy, x), _features(model, PLAIN, x), rtol=1e-4, atol=1e-5)


def test_stacked_training_reaches_head() -> None:
    model = _ensemble().train()
    model.execution = ExecutionStrategy(stack_specialists=True)
    outputs = model(_inputs())
    sum(o.square().mean() for o in outputs).backward()
    assert model.selection.weight.grad is not None
    assert torch.count_nonzero(model.selection.weight.grad) == len(SPECS)
    assert all(p.grad is not None for p in model.fusion.parameters())
    assert all(p.grad is None for p in model.specialists.parameters())


def test_auto_uses_device_default() -> None:
    model = EoSFM(SPECS[:1], INPUT_BANDS, execution="auto")
    assert model.execution_strategy(torch.device("cpu")) == execution.DEVICE_DEFAULTS["cpu"]


def test_legacy_flags_without_execution() -> None:
    model = EoSFM(SPECS[:1], INPUT_BANDS, batch_streams=False, channels_last=True)
    assert model.execution_strategy(torch.device("cpu")) == ExecutionStrategy(batch_streams=False, channels_last=True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", "execution='fast' is invalid"),
        ({"stack": True}, "Unknown execution options \\['stack'\\]"),
        ({"channels_last": "yes"}, "channels_last='yes' is invalid"),
    ],
)
def test_invalid_execution_value(value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExecutionStrategy.from_value(value)


def test_execution_from_mapping() -> None:
    strategy = ExecutionStrategy.from_value({"stack_specialists": True})
    assert strategy == ExecutionStrategy(batch_streams=True, stack_specialists=True)


def test_routed_inputs_shared_and_uncopied() -> None:
    model = EoSFM(SPECS[:2] + SPECS[4:], {"optical": ["B4", "B3", "B2"]}, execution=PLAIN).eval()
    x = {"optical": torch.randn(2, 3, 32, 32)}
    stacked = model.adapter.stack_input(x)
    routed = execution.RoutedInputs(model, stacked)
    # Each RGB specialist's one stream takes channels 0, 1, 2 in order: the input itself.
    assert all(routed[s] is stacked for s in range(len(model.streams)))


def test_routed_inputs_gather_once() -> None:
    model = _ensemble()
    stacked = model.adapter.stack_input(_inputs())
    routed = execution.RoutedInputs(model, stacked)
    rgb = [s for s, stream in enumerate(model.streams) if stream.route.roles == ("red", "green", "blue")]
    assert len(rgb) > 1
    assert all(routed[s] is routed[rgb[0]] for s in rgb)
    torch.testing.assert_close(routed[rgb[0]], model.adapter.gather(stacked, rgb[0]), rtol=0, atol=0)


FOLD = ExecutionStrategy(fold_head=True)


def test_fold_head_used_only_without_grad() -> None:
    model = _ensemble()
    with torch.no_grad():
        assert execution.folds_head(model, FOLD)
    assert not execution.folds_head(model, FOLD)  # gradients enabled
    model.train()
    with torch.no_grad():
        assert not execution.folds_head(model, FOLD)


@pytest.mark.parametrize(("norm", "folds"), [("none", True), ("layer", False)])
def test_fold_head_by_norm(norm: str, folds: bool) -> None:
    model = EoSFM(SPECS[:2], INPUT_BANDS, norm=norm, execution=PLAIN).eval()
    x = _inputs()
    with torch.no_grad():
        assert execution.folds_head(model, FOLD) is folds
    _assert_close(_features(model, FOLD, x), _features(model, PLAIN, x), rtol=1e-4, atol=1e-5)


def test_fold_head_follows_updates() -> None:
    model = _ensemble(top_k=3)
    x = _inputs()
    _features(model, FOLD, x)  # fills the folded-weight cache
    with torch.no_grad():
        model.selection.weight.mul_(1.5)
        model.norms.norms[0][0].running_mean.add_(0.25)
        model.fusion.convs[2].bias.add_(1.0)
    _assert_close(_features(model, FOLD, x), _features(model, PLAIN, x), rtol=1e-4, atol=1e-5)

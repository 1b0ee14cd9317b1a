"""EoS-FM ensemble: shapes, frozen specialists, learned selection, top-k cost."""

from __future__ import annotations

import pytest
import torch

from eos_pangaea import EoSFM
from eos_pangaea.specialists import Specialist, SpecialistSpec, load_specialist_specs

pytestmark = pytest.mark.usefixtures("one_thread")

RGB = {"optical": ["B4", "B3", "B2"]}
S2_S1 = {"optical": ["B2", "B3", "B4", "B8"], "sar": ["VV", "VH"]}


def small_specs(count: int = 4) -> list[SpecialistSpec]:
    names = ["eurosat", "potsdam", "sen12ms-s1", "imagenet", "loveda", "firerisk"][:count]
    return load_specialist_specs(names)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def count_calls(model: EoSFM) -> list[int]:
    calls = [0] * len(model.specialists)
    for index, specialist in enumerate(model.specialists):
        specialist.register_forward_hook(lambda *_, i=index: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (97, 33)])
def test_output_levels_single_modality(size):
    model = EoSFM(small_specs(2), RGB)
    out = model({"optical": torch.randn(2, 3, *size)})
    assert [o.shape[1] for o in out] == [40, 80, 160, 320]
    for o, stride in zip(out, [4, 8, 16, 32]):
        assert o.shape[0] == 2
        # ConvNeXt's strided convolutions floor each level's size.
        assert o.shape[-2:] == (size[0] // stride, size[1] // stride)


def test_output_levels_multi_modal_and_width_multiplier():
    model = EoSFM(small_specs(3), S2_S1, width_multiplier=2)
    out = model({"optical": torch.randn(2, 4, 64, 96), "sar": torch.randn(2, 2, 64, 96)})
    assert [tuple(o.shape) for o in out] == [(2, 80, 16, 24), (2, 160, 8, 12), (2, 320, 4, 6), (2, 640, 2, 3)]
    assert model.out_channels == [80, 160, 320, 640]
    assert model.reductions == [4, 8, 16, 32]
    assert all(torch.isfinite(o).all() for o in out)


def test_one_norm_per_stream():
    model = EoSFM(small_specs(3), S2_S1)
    # Each 3-band specialist gets the RGB, IR-R-G and SAR rules.
    assert len(model.streams) == 3 * 3
    assert len(model.norms.norms) == len(model.streams)
    assert model.fusion.convs[0].in_channels == 40 * len(model.streams)


def test_training_changes_head_only():
    model = EoSFM(small_specs(3), S2_S1)
    model.train()
    before_specialists = snapshot(model.specialists)
    before_weight = model.selection.weight.detach().clone()
    before_fusion = model.fusion.convs[2].weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = {"optical": torch.randn(2, 4, 64, 64), "sar": torch.randn(2, 2, 64, 64)}
    for _ in range(3):
        optimizer.zero_grad()
        loss = sum((o ** 2).mean() for o in model(x))
        loss.backward()
        assert model.selection.weight.grad is not None
        assert (model.selection.weight.grad != 0).all()
        optimizer.step()

    after_specialists = model.specialists.state_dict()
    for key, value in before_specialists.items():
        assert torch.equal(value, after_specialists[key]), key
    assert not torch.equal(before_weight, model.selection.weight)
    assert not torch.equal(before_fusion, model.fusion.convs[2].weight)
    assert all(not p.requires_grad for p in model.specialists.parameters())
    assert all(not s.training for s in model.specialists)


def test_specialists_stay_in_eval_mode():
    model = EoSFM(small_specs(2), RGB)
    model.train()
    assert model.training and model.fusion.training
    assert not any(m.training for s in model.specialists for m in s.modules())


def test_top_k_gradients_reach_kept_weights_only():
    model = EoSFM(small_specs(4), RGB, top_k=2, warmup_steps=1)
    model.train()
    x = {"optical": torch.randn(2, 3, 64, 64)}
    model(x)  # warm-up pass
    model.zero_grad()
    sum(o.pow(2).mean() for o in model(x)).backward()
    grad = model.selection.weight.grad
    kept = model.selection.selected()
    assert kept == [0, 1]
    assert (grad[kept] != 0).all()
    assert (grad[[2, 3]] == 0).all()


def test_warmup_lets_selection_pick_a_later_specialist():
    model = EoSFM(small_specs(4), RGB, top_k=1, warmup_steps=5)
    model.train()
    # Only the third specialist's columns feed the output, so only its weight
    # can reduce the loss; a tie-break at initialisation would keep the first.
    with torch.no_grad():
        for level, conv in enumerate(model.fusion.convs):
            offsets = model.fusion.offsets[level]
            conv.weight.zero_()
            conv.weight[:, offsets[2]:offsets[3]] = torch.randn_like(conv.weight[:, offsets[2]:offsets[3]])
            conv.bias.zero_()
    model.fusion.requires_grad_(False)
    optimizer = torch.optim.SGD([model.selection.weight], lr=0.5)
    x = {"optical": torch.randn(2, 3, 64, 64)}
    for _ in range(5):
        optimizer.zero_grad()
        (-sum(o.pow(2).mean() for o in model(x))).backward()
        optimizer.step()

    assert not model.selection.in_warmup
    assert model.selection.weight[2] > model.selection.weight[[0, 1, 3]].max()
    assert model.selection.selected() == [2]
    model.eval()
    assert model.selection.selected() == [2]


def test_top_k_runs_exactly_k_specialists_after_warmup():
    model = EoSFM(small_specs(6), RGB, top_k=2, warmup_steps=2)
    calls = count_calls(model)
    model.train()
    x = {"optical": torch.randn(2, 3, 32, 32)}
    model(x)
    model(x)
    assert calls == [2] * 6  # every specialist runs during warm-up
    calls[:] = [0] * 6
    model(x)
    assert sum(c > 0 for c in calls) == 2
    model.eval()
    calls[:] = [0] * 6
    model(x)
    assert sum(c > 0 for c in calls) == 2


def test_eval_applies_top_k_during_warmup():
    model = EoSFM(small_specs(4), RGB, top_k=3, warmup_steps=100)
    calls = count_calls(model)
    model.eval()
    model({"optical": torch.randn(1, 3, 32, 32)})
    assert calls == [1, 1, 1, 0]
    model.train()
    assert model.selection.selected() == [0, 1, 2, 3]
    assert model.selection.selected(training=False) == [0, 1, 2]


def test_top_k_ties_break_by_ensemble_order():
    model = EoSFM(small_specs(4), RGB, top_k=2)
    assert model.selection.selected() == [0, 1]
    with torch.no_grad():
        model.selection.weight.copy_(torch.tensor([1.0, 2.0, 2.0, 2.0]))
    assert model.selection.selected() == [1, 2]


def test_top_k_equals_zeroed_weights():
    model = EoSFM(small_specs(4), RGB, top_k=2).eval()
    x = {"optical": torch.randn(2, 3, 32, 32)}
    pruned = model(x)
    model.selection.top_k = None
    with torch.no_grad():
        model.selection.weight[2:] = 0
    full = model(x)
    for a, b in zip(pruned, full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_top_k_counts_only_eligible_specialists():
    specs = load_specialist_specs(["eurosat-s2", "sen12ms-s1", "eurosat"])
    model = EoSFM(specs, RGB, top_k=2)
    # The 13-band specialist cannot see an RGB input, so it is never selected.
    assert model.selection.selected() == [1, 2]


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_normalisation_kinds(norm):
    model = EoSFM(small_specs(2), RGB, norm=norm).train()
    stacked = model.adapter.stack_input({"optical": torch.randn(4, 3, 32, 32) * 50})
    features = model.run_specialist(0, model._streams_of[0], stacked)[0]
    normalised = model.norms(model._streams_of[0][0], features)
    level = normalised[1]
    if norm == "batch":
        assert level.mean(dim=(0, 2, 3)).abs().max() < 1e-4
        assert (level.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-2
    elif norm == "layer":
        assert level.mean(dim=(1, 2, 3)).abs().max() < 1e-4
    else:
        assert torch.equal(level, features[1])
    assert list(model.norms.parameters()) == []


def test_unknown_norm_raises():
    with pytest.raises(ValueError, match="Unknown feature normalisation 'group'"):
        EoSFM(small_specs(1), RGB, norm="group")


def test_invalid_top_k_raises():
    with pytest.raises(ValueError, match="top_k=0 is invalid"):
        EoSFM(small_specs(2), RGB, top_k=0)


def test_top_k_without_warmup_warns(caplog):
    EoSFM(small_specs(3), RGB, top_k=1, warmup_steps=0)
    assert "fixed by tie-breaking" in caplog.text


def test_batched_streams_match_one_call_per_stream():
    specs = small_specs(3)
    batched = EoSFM(specs, S2_S1, batch_streams=True).eval()
    plain = EoSFM(batched.specialists, S2_S1, batch_streams=False).eval()
    plain.load_state_dict(batched.state_dict())
    x = {"optical": torch.randn(2, 4, 40, 40), "sar": torch.randn(2, 2, 40, 40)}
    for a, b in zip(batched(x), plain(x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_follows_module_dtype():
    model = EoSFM(small_specs(2), RGB).double().eval()
    out = model({"optical": torch.randn(1, 3, 32, 32, dtype=torch.float64)})
    assert all(o.dtype == torch.float64 for o in out)


def test_stem_channels_must_match_declared_bands():
    import timm

    backbone = timm.create_model("convnextv2_atto", features_only=True, in_chans=4)
    with pytest.raises(ValueError, match="declares 3 bands"):
        Specialist(SpecialistSpec("x", ("R", "G", "B")), backbone)


def test_head_state_dict_leaves_out_specialists():
    specs = small_specs(2)
    model = EoSFM(specs, RGB, specialists_in_state_dict=False)
    state = model.state_dict()
    assert not any(k.startswith("specialists.") for k in state)
    assert "selection.weight" in state
    assert "_extra_state" in state
    twin = EoSFM(model.specialists, RGB, specialists_in_state_dict=False)
    twin.load_state_dict(state, strict=True)
    other = EoSFM(specs, RGB, specialists_in_state_dict=False)
    with pytest.raises(ValueError, match="other weights"):
        other.load_state_dict(state, strict=True)

"""Band routing: which streams fire for PANGAEA datasets' bands."""

from __future__ import annotations

import logging

import pytest
import torch

from eos_pangaea.bands import BandAdapter, BandRoleTable, canonical_label, plan_streams
from eos_pangaea.specialists import load_specialist_specs
from tests.conftest import SEN1FLOODS11_BANDS

SPECS = load_specialist_specs()
SPECIALIST_BANDS = [(spec.name, spec.bands) for spec in SPECS]
THREE_BAND = [spec.name for spec in SPECS if spec.in_chans == 3]
RGB_ROUTE = ("red", "green", "blue")
IRRG_ROUTE = ("nir", "red", "green")
SAR_ROUTE = ("vv", "vh", "vh")


def routes_by_specialist(streams):
    routes: dict[str, set[tuple[str, ...]]] = {}
    for stream in streams:
        routes.setdefault(SPECS[stream.specialist].name, set()).add(stream.route.roles)
    return routes


def labels_of(stream, input_bands):
    return [None if s is None else input_bands[s[0]][s[1]] for s in stream.sources]


def test_manifest_has_21_specialists():
    assert len(SPECS) == 21
    assert len(THREE_BAND) == 18


def test_canonical_label_aliases():
    assert canonical_label("B01") == "B1"
    assert canonical_label("b8a") == "B8A"
    assert canonical_label("B10") == "B10"
    assert canonical_label("VV") == "VV"


def test_sen1floods11_every_three_band_specialist_gets_three_rules():
    streams = plan_streams(SPECIALIST_BANDS, SEN1FLOODS11_BANDS, dataset="Sen1Floods11")
    routes = routes_by_specialist(streams)
    for name in THREE_BAND:
        assert {RGB_ROUTE, IRRG_ROUTE, SAR_ROUTE} <= routes[name], name


def test_sen1floods11_multiband_specialists_get_exact_bands():
    streams = plan_streams(SPECIALIST_BANDS, SEN1FLOODS11_BANDS, dataset="Sen1Floods11")
    by_name = {SPECS[s.specialist].name: s for s in streams if SPECS[s.specialist].in_chans > 3}
    assert set(by_name) == {"eurosat-s2", "sen12ms-s2", "bigearthnet"}
    assert labels_of(by_name["eurosat-s2"], SEN1FLOODS11_BANDS) == [
        "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12", "B8A"]
    assert labels_of(by_name["sen12ms-s2"], SEN1FLOODS11_BANDS) == SEN1FLOODS11_BANDS["optical"]
    assert labels_of(by_name["bigearthnet"], SEN1FLOODS11_BANDS) == [
        "VH", "VV", "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"]
    # The Sentinel-1+2 specialist mixes both modalities in one stream.
    assert {s[0] for s in by_name["bigearthnet"].sources} == {"optical", "sar"}


def test_sen1floods11_identical_routes_are_merged():
    streams = plan_streams(SPECIALIST_BANDS, SEN1FLOODS11_BANDS, dataset="Sen1Floods11")
    keys = [(s.specialist, s.route.roles) for s in streams]
    assert len(keys) == len(set(keys))
    names = {(SPECS[s.specialist].name, s.route.name) for s in streams}
    assert ("cloud_cover", "exact+ir_r_g") in names
    assert ("sen12ms-s1", "exact+sar_pseudo_rgb") in names
    assert ("eurosat", "exact+rgb") in names
    # bigearthnet-s1 was trained on VH, VV, VV: its own route differs from the SAR rule.
    assert ("bigearthnet-s1", "exact") in names
    assert len(streams) == 58


def test_hls_burn_scars_routes():
    bands = {"optical": ["B2", "B3", "B4", "B8A", "B11", "B12"]}
    streams = plan_streams(SPECIALIST_BANDS, bands, dataset="HLSBurnScars")
    routes = routes_by_specialist(streams)
    # Six bands satisfy no 13- or 14-band specialist, and there is no SAR.
    assert set(routes) == set(THREE_BAND)
    for name in THREE_BAND:
        assert routes[name] == {RGB_ROUTE, IRRG_ROUTE}, name
    irrg = next(s for s in streams if s.route.roles == IRRG_ROUTE)
    assert labels_of(irrg, bands) == ["B8A", "B4", "B3"]


def test_rgb_only_input_streams():
    bands = {"optical": ["B4", "B3", "B2"]}
    streams = plan_streams(SPECIALIST_BANDS, bands)
    assert len(streams) == 18
    assert {SPECS[s.specialist].name for s in streams} == set(THREE_BAND)
    assert all(labels_of(s, bands) == ["B4", "B3", "B2"] for s in streams)


def test_fivebillionpixels_gaofen_bands():
    bands = {"optical": ["B8", "B4", "B3", "B2"]}
    streams = plan_streams(SPECIALIST_BANDS, bands, dataset="FiveBillionPixels")
    routes = routes_by_specialist(streams)
    assert all(routes[name] == {RGB_ROUTE, IRRG_ROUTE} for name in THREE_BAND)
    rgb = next(s for s in streams if s.route.roles == RGB_ROUTE)
    assert labels_of(rgb, bands) == ["B4", "B3", "B2"]
    assert rgb.sources == (("optical", 1), ("optical", 2), ("optical", 3))


def test_dynamicearthnet_planet_b5_is_near_infrared():
    bands = {"optical": ["B2", "B3", "B4", "B5"]}
    streams = plan_streams(SPECIALIST_BANDS, bands, dataset="DynamicEarthNet")
    irrg = [s for s in streams if s.route.roles == IRRG_ROUTE]
    assert len(irrg) == 18
    assert labels_of(irrg[0], bands) == ["B5", "B4", "B3"]
    # Read with Sentinel-2 meanings, B5 is a red-edge band and IR-R-G cannot fire.
    plain = plan_streams(SPECIALIST_BANDS, bands)
    assert not any(s.route.roles == IRRG_ROUTE for s in plain)


def test_xview2_opencv_channels_are_reversed():
    bands = {"optical": ["B4", "B3", "B2"]}
    streams = plan_streams(SPECIALIST_BANDS, bands, dataset="xView2")
    assert labels_of(streams[0], bands) == ["B2", "B3", "B4"]


def test_sar_only_input():
    bands = {"sar": ["VV", "VH"]}
    streams = plan_streams(SPECIALIST_BANDS, bands)
    routes = routes_by_specialist(streams)
    assert set(routes) == set(THREE_BAND)
    assert routes["bigearthnet-s1"] == {("vh", "vv", "vv"), SAR_ROUTE}
    assert all(routes[name] == {SAR_ROUTE} for name in THREE_BAND if name != "bigearthnet-s1")


def test_no_specialist_can_see_input_raises():
    with pytest.raises(ValueError) as error:
        plan_streams(SPECIALIST_BANDS, {"optical": ["B5", "B6"]})
    message = str(error.value)
    assert "No specialist can use this input" in message
    assert "B5->red_edge_1" in message
    assert "eurosat-s2" in message
    assert "loveda: R, G, B" in message


def test_unknown_band_name_raises():
    with pytest.raises(ValueError, match="Unknown band name 'B13'"):
        plan_streams(SPECIALIST_BANDS, {"optical": ["B13", "B4"]})


def test_extra_band_labels_define_new_names():
    streams = plan_streams(SPECIALIST_BANDS, {"optical": ["NIR_1", "RED", "GRN"]},
                           band_labels={"NIR_1": "nir", "RED": "red", "GRN": "green"})
    assert {s.route.roles for s in streams} == {IRRG_ROUTE}


def test_partial_route_skipped_and_logged(caplog):
    caplog.set_level(logging.INFO, logger="eos_pangaea.bands")
    bands = {"optical": ["B4", "B3"]}
    with pytest.raises(ValueError, match="No specialist"):
        plan_streams(SPECIALIST_BANDS, bands)
    assert "skipped, input lacks roles ['blue']" in caplog.text


def test_partial_route_zero_filled_on_request():
    bands = {"optical": ["B4", "B3"]}
    streams = plan_streams(SPECIALIST_BANDS, bands, missing_bands="zero")
    rgb = [s for s in streams if s.route.roles == RGB_ROUTE]
    assert len(rgb) == 18
    assert rgb[0].sources == (("optical", 0), ("optical", 1), None)


def test_invalid_missing_bands_policy():
    with pytest.raises(ValueError, match="missing_bands='fill'"):
        plan_streams(SPECIALIST_BANDS, {"optical": ["B4", "B3", "B2"]}, missing_bands="fill")


def test_role_table_rejects_unlisted_role():
    with pytest.raises(ValueError, match="role 'ultraviolet'"):
        BandRoleTable({"roles": {"red": "red"}, "labels": {"B4": "ultraviolet"}})


def test_adapter_gathers_across_modalities_and_zero_fills():
    bands = {"optical": ["B4", "B3"], "sar": ["VV"]}
    specs = [("a", ("B3", "VV", "B2"))]
    streams = plan_streams(specs, bands, rules=[], missing_bands="zero")
    adapter = BandAdapter(streams, bands)
    optical = torch.arange(2.0).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    sar = torch.full((1, 1, 2, 2), 7.0)
    gathered = adapter.gather(adapter.stack_input({"optical": optical, "sar": sar}), 0)
    assert gathered[0, :, 0, 0].tolist() == [1.0, 7.0, 0.0]


def test_adapter_rejects_wrong_channel_count():
    bands = {"optical": ["B4", "B3", "B2"]}
    adapter = BandAdapter(plan_streams([("a", ("R", "G", "B"))], bands), bands)
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        adapter.stack_input({"optical": torch.zeros(1, 4, 8, 8)})
    with pytest.raises(ValueError, match="lacks modality 'optical'"):
        adapter.stack_input({"sar": torch.zeros(1, 3, 8, 8)})

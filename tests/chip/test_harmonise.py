from datetime import UTC, datetime

import pytest

from geofm.chip.harmonise import DATA_GUARD_FRACTION, baseline_of, decide

WHEN = datetime(2024, 6, 1, tzinfo=UTC)


def test_baseline_sources_in_order():
    assert baseline_of({"s2:processing_baseline": "05.10", "processing:version": "05.11"},
                       "x") == ("05.10", "properties.s2:processing_baseline")
    assert baseline_of({"processing:version": "05.11"}, "x")[1] == "properties.processing:version"
    assert baseline_of({}, "S2B_MSIL2A_20240601T100000_N0510_R022_T33UUP_20240601T120000") == \
        ("05.10", "id (_N0510_)")
    assert baseline_of({}, "S2B_33UUP_20240601_0_L2A") == (None, None)


@pytest.mark.parametrize(("share", "removed"), [(0.1, 1000), (DATA_GUARD_FRACTION + 0.01, 0)])
def test_data_check_only_vetoes_a_removal(share, removed):
    h = decide(props={"s2:processing_baseline": "05.10"}, item_id="x", when=WHEN,
               declared_offsets=[], flag=None)
    after = h.after_data_check(share, "blue")
    assert after.offset_dn == removed and after.data_check.endswith("below 1000")
    kept = decide(props={"s2:processing_baseline": "05.10"}, item_id="x", when=WHEN,
                  declared_offsets=[0.0], flag=None)
    assert kept.offset_dn == 0 and kept.after_data_check(0.9, "blue").offset_dn == 0


def test_record_is_json_ready():
    import json

    h = decide(props={"s2:processing_baseline": "04.00", "earthsearch:boa_offset_applied": True},
               item_id="x", when=WHEN, declared_offsets=[-0.1], flag=True)
    record = json.loads(json.dumps(h.record()))
    assert record["offset_dn"] == 0 and record["rule"] == "2"
    assert record["contradictions"] and record["note"].startswith("none (earthsearch")

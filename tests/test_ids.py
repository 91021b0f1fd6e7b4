import pytest

from geofm.exceptions import GeofmError, UnsafePathError
from geofm.ids import (
    MAX_PART_LENGTH,
    SAFE_CHARS,
    check_part,
    decode_id,
    encode_id,
    id_problem,
    tile_problem,
)


@pytest.mark.parametrize("item_id", ["S2A_33UUP_20210601_0_L2A", "LC08_L2SP_001002_x.y-z",
                                     "S2A_MSIL2A_20210601T100031_R122_T33UUP.SAFE", "a..b"])
def test_safe_ids_are_their_own_file_names(item_id):
    assert encode_id(item_id) == item_id and decode_id(item_id) == item_id


@pytest.mark.parametrize(("item_id", "name"), [
    ("S2A/2021", "S2A%2F2021"), ("a b:c", "a%20b%3Ac"), ("100%", "100%25"),
    ("%2F", "%252F"), ("é", "%C3%A9"), ("a\\b", "a%5Cb"), ("T:1", "T%3A1")])
def test_other_characters_are_percent_encoded_reversibly(item_id, name):
    assert encode_id(item_id) == name
    assert decode_id(name) == item_id
    assert set(name) <= SAFE_CHARS | {"%"}


def test_encoding_is_collision_free():
    ids = ["a/b", "a%2Fb", "a%252Fb", "a_b", "a b", "a%20b", "A/B"]
    assert len({encode_id(i) for i in ids}) == len(ids)


@pytest.mark.parametrize(("item_id", "reason"), [
    ("../../escape", "'.' or '..' path segment"), ("a/../../b", "path segment"),
    ("a/./b", "path segment"), ("/abs/id", "absolute path"), ("\\\\host\\x", "absolute"),
    ("C:/x", "absolute"), ("C:\\x", "absolute"),
    (".", "is '.'"), ("..", "is '..'"), ("", "is empty"),
    (".hidden", "starts with '.'"), ("a\x00b", "control character"), ("a\nb", "control"),
    ("a\x7fb", "control"), (None, "not a string"), (42, "not a string"),
    ("é" * (MAX_PART_LENGTH // 6 + 1), "longer than"),
])
def test_unsafe_ids_are_rejected_with_the_reason(item_id, reason):
    assert reason in id_problem(item_id)
    with pytest.raises(UnsafePathError, match="rename the item") as info:
        encode_id(item_id)
    assert info.value.value == item_id and isinstance(info.value, GeofmError | ValueError)


@pytest.mark.parametrize("name", ["a%2f", "a%2", "a%ZZ", "a%41", "a b", "a/b", "%2E%2E",
                                  ".hidden", "%FF", "", "%2Fabs"])
def test_names_encode_id_cannot_write_are_not_decoded(name):
    with pytest.raises(UnsafePathError, match="not an encoded item id.*rename or remove"):
        decode_id(name)


def test_tile_codes_must_be_safe_as_they_are():
    assert tile_problem("33UUP") is None and tile_problem("WRS2-001002") is None
    assert "holds '/'" in tile_problem("../../../X")
    assert "holds ' '" in tile_problem("33 UUP")
    assert "starts with '.'" in tile_problem(".x")
    assert tile_problem("") == "is empty" and "not a string" in tile_problem(33)


def test_check_part_passes_chip_ids_and_refuses_others():
    assert check_part("33UUP_64_0000_0001", what="chip id") == "33UUP_64_0000_0001"
    for bad in ("../x", "a/b", ".x", "", "x" * (MAX_PART_LENGTH + 1)):
        with pytest.raises(UnsafePathError, match="chip id"):
            check_part(bad, what="chip id")

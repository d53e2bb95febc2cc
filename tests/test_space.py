import json

import pytest

from search.space.enumerate import enumerate_ops
from search.space.macro import TABLE4_VARIANTS, SearchSpace, fbnet_space, get_space, make_divisible
from search.space.opspec import OpSpecError


def test_default_space_matches_table_1_and_2():
    space = get_space()
    assert len(space.slots) == 22
    assert len(space.candidates) == 9
    assert [s.cout for s in space.slots][:6] == [16, 24, 24, 24, 24, 32]
    assert space.final_map == 7
    assert space.fixed_ops()["head"].cout == 1984


def test_default_space_expands_to_108_searchable_plus_4_fixed_ops():
    space = get_space()
    en = enumerate_ops(space)
    shapes = {(s.cin, s.cout, s.stride, s.h) for s in space.slots}
    assert len(shapes) == 12
    assert len(en) == 108 + 4
    # Every (layer, candidate) resolves to a known op, and layers of the same shape share keys.
    assert all(k in en.ops for row in en.layer_keys for k in row)
    assert en.layer_keys[2] == en.layer_keys[3] == en.layer_keys[4]
    assert set(en.fixed_keys) == {"stem", "head", "pool", "fc"}


@pytest.mark.parametrize(("resolution", "width"), TABLE4_VARIANTS)
def test_table4_variants_are_one_argument_away(resolution, width):
    space = fbnet_space(resolution, width)
    assert space.resolution == resolution
    assert all(s.cout % 8 == 0 for s in space.slots)
    assert space.final_map >= 3


def test_small_inputs_keep_a_usable_final_feature_map():
    space = fbnet_space(32, 0.25)
    assert space.final_map == 4  # the ImageNet strides would leave 1x1
    assert space.stem_stride == 1


def test_make_divisible_follows_mobilenetv2():
    assert [make_divisible(v) for v in (16 * 0.35, 24 * 0.35, 32 * 0.5, 112 * 0.35, 1)] == [8, 8, 16, 40, 8]


def test_hash_is_content_not_labels_and_survives_json():
    a, b = fbnet_space(224, 1.0), fbnet_space(224, 1.0)
    assert a.hash == b.hash
    assert fbnet_space(224, 0.5).hash != a.hash
    again = SearchSpace.from_dict(json.loads(a.to_json()))
    assert again == a and again.hash == a.hash
    # Pinned: stored tables are found by this hash, so it may only change with the space's content.
    assert a.hash == "f812f72ff20e6fbf20107043fa2853d20aedb69258fc8355d29c4f2cb04dcb7f"


def test_tampered_space_json_is_refused():
    data = json.loads(get_space().to_json())
    data["stages"][0]["c"] = 24
    with pytest.raises(OpSpecError, match="hash"):
        SearchSpace.from_dict(data)
    del data["hash"]
    assert SearchSpace.from_dict(data).slots[0].cout == 24


def test_bad_spaces_and_architectures_get_clear_errors():
    with pytest.raises(OpSpecError, match="unknown search space 'mnas'"):
        get_space("mnas")
    with pytest.raises(OpSpecError, match="resolution 8"):
        fbnet_space(8)
    with pytest.raises(OpSpecError, match="is not a block"):
        fbnet_space(candidates=("ir_k3_e6", "conv9"))
    space = get_space()
    with pytest.raises(OpSpecError, match="has 3 layers, the space has 22"):
        space.network_ops(["skip"] * 3)
    with pytest.raises(OpSpecError, match="layer 0: 'ds_k3' is not a candidate"):
        space.network_ops(["ds_k3"] + ["skip"] * 21)


def test_custom_candidate_list():
    space = fbnet_space(candidates=("ir_k3_e6", "skip"))
    assert len(enumerate_ops(space)) == 12 * 2 + 4

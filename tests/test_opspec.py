import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from search.space.opspec import OpSpec, OpSpecError, from_hwnasbench_key
from tests.hwnasbench_data import fbnet_part


def test_key_and_canonical_json_are_stable():
    spec = OpSpec("ir", 16, 24, 112, 112, stride=2, kernel=3, expansion=6)
    # Literal expectations: a change here invalidates every stored table, so it must be deliberate.
    assert spec.key == "ir_k3_e6_g1-cin16-cout24-s2-h112-w112-b1-float32"
    assert spec.canonical_json() == (
        '{"batch":1,"cin":16,"cout":24,"dtype":"float32","expansion":6,"groups":1,'
        '"h":112,"kernel":3,"kind":"ir","stride":2,"v":1,"w":112}'
    )


@st.composite
def specs(draw):
    kind = draw(st.sampled_from(["conv", "ir", "ds", "skip", "pool", "fc"]))
    g = draw(st.sampled_from([1, 2])) if kind == "ir" else 1
    cin = draw(st.integers(1, 64)) * g
    cout = cin if kind == "pool" else draw(st.integers(1, 64)) * g
    hw = (1, 1) if kind == "fc" else (draw(st.integers(1, 300)), draw(st.integers(1, 300)))
    return OpSpec(
        kind,
        cin,
        cout,
        *hw,
        stride=1 if kind in ("pool", "fc") else draw(st.sampled_from([1, 2])),
        kernel=draw(st.sampled_from([1, 3, 5, 7])) if kind in ("conv", "ir", "ds") else 1,
        expansion=draw(st.integers(1, 6)) if kind == "ir" else 1,
        groups=g,
        batch=draw(st.integers(1, 8)),
    )


@given(specs())
def test_every_serialisation_round_trips(spec):
    assert OpSpec.from_key(spec.key) == spec
    assert OpSpec.from_json(spec.canonical_json()) == spec
    assert OpSpec.from_dict(json.loads(spec.canonical_json())).key == spec.key


@given(specs(), specs())
def test_distinct_specs_never_share_a_key(a, b):
    assert (a.key == b.key) == (a == b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "bogus", "cin": 8, "cout": 8, "h": 8, "w": 8}, "kind 'bogus'"),
        ({"kind": "ir", "cin": 0, "cout": 8, "h": 8, "w": 8}, "cin must be a positive integer"),
        ({"kind": "ir", "cin": 100000, "cout": 8, "h": 8, "w": 8}, "channels above"),
        ({"kind": "ir", "cin": 8, "cout": 8, "h": 99999, "w": 8}, "largest supported side"),
        ({"kind": "ir", "cin": 9, "cout": 8, "h": 8, "w": 8, "groups": 2}, "not divisible by groups"),
        ({"kind": "ir", "cin": 8, "cout": 8, "h": 8, "w": 8, "stride": 3}, "stride must be 1 or 2"),
        ({"kind": "conv", "cin": 8, "cout": 8, "h": 8, "w": 8, "kernel": 4}, "kernel must be one of"),
        ({"kind": "fc", "cin": 8, "cout": 8, "h": 2, "w": 2}, "h and w must be 1"),
        ({"kind": "ir", "cin": 8, "cout": 8, "h": 8.5, "w": 8}, "h must be a positive integer"),
        ({"kind": "ir", "cin": 8, "cout": 8, "h": 8, "w": 8, "dtype": "int4"}, "dtype 'int4'"),
    ],
)
def test_impossible_specs_are_refused_with_the_field_named(kwargs, message):
    with pytest.raises(OpSpecError, match=message):
        OpSpec.from_dict(kwargs)


def test_untrusted_json_with_unknown_or_missing_fields_is_refused():
    with pytest.raises(OpSpecError, match="unknown op spec fields: evil"):
        OpSpec.from_dict({"kind": "ir", "cin": 8, "cout": 8, "h": 8, "w": 8, "evil": 1})
    with pytest.raises(OpSpecError, match="missing: cout, h"):
        OpSpec.from_dict({"kind": "ir", "cin": 8, "w": 8})
    with pytest.raises(OpSpecError, match="version 2"):
        OpSpec.from_dict({"v": 2, "kind": "ir", "cin": 8, "cout": 8, "h": 8, "w": 8})
    with pytest.raises(OpSpecError, match="not an op key"):
        OpSpec.from_key("../../etc/passwd")


def test_hwnasbench_names_round_trip():
    for name in (
        "ConvBlock_H56_W56_Cin24_Cout32_exp6_kernel5_stride2_group1",
        "Skip_H28_W28_Cin32_Cout32_stride1",
        "FC_Cin1984_Cout1000",
        "ConvNorm_H224_W224_Cin3_Cout16_kernel3_stride2_group1",
        "AvgP_H7_W7_Cin1984_Cout1984_kernel7_stride1",
    ):
        assert from_hwnasbench_key(name).hwnasbench_key() == name
    with pytest.raises(OpSpecError):
        from_hwnasbench_key("Pool_H7")
    with pytest.raises(OpSpecError, match="not a global pool"):
        from_hwnasbench_key("AvgP_H7_W7_Cin8_Cout8_kernel3_stride1")


def test_every_published_hwnasbench_name_reads_back_to_itself():
    """All 225 names of HW-NAS-Bench v1.0's FBNet tables (the shared Pixel 3 part) are ops we can key."""
    names = fbnet_part()["pixel3_latency"]
    assert len(names) == 225
    for name in names:
        assert from_hwnasbench_key(name).hwnasbench_key() == name

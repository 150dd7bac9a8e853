import pytest

from semverkit import Comparator, Range, Version, satisfies


def expand(text):
    return str(Range.parse(text))


# -- comparators ----------------------------------------------------------------

def test_comparator_parse_and_str():
    c = Comparator.parse(">= 1.2.3")
    assert c.operator == ">="
    assert c.version == Version(1, 2, 3)
    assert str(c) == ">=1.2.3"


def test_comparator_without_operator_means_equal():
    c = Comparator.parse("1.2.3")
    assert c.operator == "="
    assert str(c) == "1.2.3"


def test_comparator_test_each_operator():
    v = Version(1, 2, 3)
    assert Comparator("<", v).test("1.2.2") and not Comparator("<", v).test("1.2.3")
    assert Comparator("<=", v).test("1.2.3") and not Comparator("<=", v).test("1.2.4")
    assert Comparator(">", v).test("1.2.4") and not Comparator(">", v).test("1.2.3")
    assert Comparator(">=", v).test("1.2.3") and not Comparator(">=", v).test("1.2.2")
    assert Comparator("=", v).test("1.2.3+b") and not Comparator("=", v).test("1.2.4")


def test_comparator_rejects_unknown_operator():
    with pytest.raises(ValueError):
        Comparator("!=", Version(1, 0, 0))


# -- primitive ranges -------------------------------------------------------------

def test_exact_version_range():
    r = Range.parse("1.2.3")
    assert r.contains("1.2.3") is True
    assert r.contains("1.2.4") is False


def test_equals_and_v_prefix():
    assert expand("=1.2.3") == "1.2.3"
    assert expand("v1.2.3") == "1.2.3"


def test_whitespace_joins_comparators_with_and():
    r = Range.parse(">=1.2.7 <1.3.0")
    assert r.contains("1.2.7")
    assert r.contains("1.2.99")
    assert not r.contains("1.2.6")
    assert not r.contains("1.3.0")


def test_space_after_operator_is_allowed():
    assert expand(">= 1.2.3 <  2.0.0") == ">=1.2.3 <2.0.0"


def test_or_sets():
    r = Range.parse("1.2.7 || >=1.2.9 <2.0.0")
    assert "1.2.7" in r
    assert "1.2.9" in r
    assert "1.4.6" in r
    assert "1.2.8" not in r
    assert "2.0.0" not in r


def test_partial_greater_than_bumps_to_next():
    assert expand(">1.2") == ">=1.3.0"
    assert expand(">1") == ">=2.0.0"


def test_partial_greater_or_equal_fills_zeros():
    assert expand(">=1.2") == ">=1.2.0"
    assert expand(">=1") == ">=1.0.0"


def test_partial_less_than_excludes_prereleases_of_bound():
    assert expand("<1.2") == "<1.2.0-0"
    assert "1.1.9" in Range.parse("<1.2")
    assert "1.2.0" not in Range.parse("<1.2")


def test_partial_less_or_equal_includes_whole_partial():
    assert expand("<=1.2") == "<1.3.0-0"
    assert expand("<=1") == "<2.0.0-0"
    assert "1.2.9" in Range.parse("<=1.2")


def test_operators_with_wildcard():
    assert expand(">=*") == "*"
    assert expand("<=x") == "*"
    assert expand(">*") == "<0.0.0-0"
    assert "0.0.0" not in Range.parse("<*")


# -- x-ranges -----------------------------------------------------------------------

def test_star_and_empty_match_any_release():
    for text in ["*", "", "x", "X", "  "]:
        r = Range.parse(text)
        assert str(r) == "*"
        assert "0.0.0" in r
        assert "99.1.2" in r


def test_major_x_range():
    assert expand("1.x") == ">=1.0.0 <2.0.0-0"
    assert expand("1") == ">=1.0.0 <2.0.0-0"
    assert "1.99.0" in Range.parse("1.x")
    assert "2.0.0" not in Range.parse("1.x")


def test_minor_x_range():
    assert expand("1.2.*") == ">=1.2.0 <1.3.0-0"
    assert expand("1.2") == ">=1.2.0 <1.3.0-0"
    assert "1.2.0" in Range.parse("1.2.x")
    assert "1.3.0" not in Range.parse("1.2.x")


def test_x_range_with_trailing_wildcards():
    assert expand("1.x.x") == ">=1.0.0 <2.0.0-0"


# -- tilde ------------------------------------------------------------------------------

def test_tilde_full_version_allows_patch_updates():
    r = Range.parse("~1.2.3")
    assert str(r) == ">=1.2.3 <1.3.0-0"
    assert "1.2.9" in r
    assert "1.2.2" not in r
    assert "1.3.0" not in r


def test_tilde_major_minor_allows_patch_updates_only():
    assert expand("~1.2") == ">=1.2.0 <1.3.0-0"
    assert "1.3.0" not in Range.parse("~1.2")


def test_tilde_major_only_allows_minor_updates():
    assert expand("~1") == ">=1.0.0 <2.0.0-0"
    assert "1.9.0" in Range.parse("~1")


def test_tilde_zero_versions():
    assert expand("~0.2.3") == ">=0.2.3 <0.3.0-0"
    assert expand("~0") == ">=0.0.0 <1.0.0-0"


def test_tilde_wildcard_matches_anything():
    assert expand("~*") == "*"
    assert expand("~x.x") == "*"


def test_tilde_greater_than_alias():
    assert expand("~>1.2.3") == ">=1.2.3 <1.3.0-0"
    assert expand("~> 1.2") == ">=1.2.0 <1.3.0-0"


def test_tilde_keeps_prerelease_lower_bound():
    r = Range.parse("~1.2.3-beta.2")
    assert str(r) == ">=1.2.3-beta.2 <1.3.0-0"
    assert "1.2.3-beta.4" in r
    assert "1.2.3-beta.1" not in r


# -- caret ------------------------------------------------------------------------------

def test_caret_major_nonzero():
    r = Range.parse("^1.2.3")
    assert str(r) == ">=1.2.3 <2.0.0-0"
    assert "1.9.9" in r
    assert "2.0.0" not in r
    assert "1.2.2" not in r


def test_caret_zero_major_locks_minor():
    r = Range.parse("^0.2.3")
    assert str(r) == ">=0.2.3 <0.3.0-0"
    assert "0.2.9" in r
    assert "0.3.0" not in r


def test_caret_zero_zero_locks_patch():
    r = Range.parse("^0.0.3")
    assert str(r) == ">=0.0.3 <0.0.4-0"
    assert "0.0.4" not in r


def test_caret_partials():
    assert expand("^1.2") == ">=1.2.0 <2.0.0-0"
    assert expand("^1") == ">=1.0.0 <2.0.0-0"
    assert expand("^0.0") == ">=0.0.0 <0.1.0-0"
    assert expand("^0") == ">=0.0.0 <1.0.0-0"
    assert expand("^0.1") == ">=0.1.0 <0.2.0-0"
    assert expand("^0.1.2") == ">=0.1.2 <0.2.0-0"
    assert expand("^1.x") == ">=1.0.0 <2.0.0-0"
    assert expand("^*") == "*"


# -- hyphen ranges ---------------------------------------------------------------------

def test_hyphen_range_is_inclusive():
    r = Range.parse("1.2.3 - 2.3.4")
    assert str(r) == ">=1.2.3 <=2.3.4"
    assert "1.2.3" in r
    assert "2.3.4" in r
    assert "2.3.5" not in r


def test_hyphen_range_partial_ends():
    assert expand("1.2 - 2.3.4") == ">=1.2.0 <=2.3.4"
    assert expand("1.2.3 - 2.3") == ">=1.2.3 <2.4.0-0"
    assert expand("1.2.3 - 2") == ">=1.2.3 <3.0.0-0"


def test_hyphen_range_wildcard_ends():
    assert expand("* - 2.0.0") == "<=2.0.0"
    assert expand("1.0.0 - *") == ">=1.0.0"


# -- pre-release handling -----------------------------------------------------------

def test_prerelease_excluded_from_plain_range():
    assert not satisfies("1.3.0-beta", "^1.2.0")
    assert not satisfies("1.0.0-rc.1", "*")


def test_prerelease_allowed_by_same_tuple_bound():
    assert satisfies("1.2.4-beta.2", ">=1.2.4-beta.1")
    assert satisfies("1.2.4", ">=1.2.4-beta.1")


def test_prerelease_on_other_tuple_is_excluded():
    assert not satisfies("3.4.5-alpha.9", ">=1.2.3-beta.1")
    assert not satisfies("1.2.4-beta.2", ">1.2.3-alpha.3 <2.0.0")


def test_prerelease_rule_applies_per_set():
    r = Range.parse(">=1.0.0 <2.0.0 || >=2.1.0-rc.1 <3.0.0")
    assert "2.1.0-rc.2" in r
    assert "1.5.0-rc.1" not in r


def test_include_prerelease_option():
    assert satisfies("1.3.0-beta", "^1.2.0", include_prerelease=True)
    assert satisfies("1.0.0-rc.1", "*", include_prerelease=True)
    r = Range.parse("^1.2.0", include_prerelease=True)
    assert r.include_prerelease
    assert "2.0.0-rc.1" not in r


def test_satisfies_with_range_object_and_override():
    r = Range.parse("^1.2.0")
    assert satisfies("1.5.0", r)
    assert not satisfies("1.5.0-rc.1", r)
    assert satisfies("1.5.0-rc.1", r, include_prerelease=True)
    assert not r.include_prerelease


# -- the Range object -----------------------------------------------------------------

def test_range_contains_accepts_version_objects():
    assert Range.parse("~2.1").contains(Version(2, 1, 7))


def test_range_contains_rejects_invalid_version():
    with pytest.raises(ValueError):
        Range.parse("*").contains("1.2")


def test_range_sets_property():
    r = Range.parse("^1.0.0 || 3.0.0")
    assert len(r.sets) == 2
    assert [str(c) for c in r.sets[1]] == ["3.0.0"]


def test_range_str_of_union_with_any():
    assert expand("1.2.3 || *") == "1.2.3 || *"


def test_range_equality_and_hash():
    assert Range.parse("^1.2") == Range.parse(">=1.2.0 <2.0.0-0")
    assert hash(Range.parse("~1.2")) == hash(Range.parse("1.2.x"))
    assert Range.parse("^1.2") != Range.parse("^1.2", include_prerelease=True)
    assert (Range.parse("^1.2") == "^1.2") is False


def test_range_repr():
    assert repr(Range.parse("~1.2.3")) == "Range('>=1.2.3 <1.3.0-0')"


def test_range_requires_a_set():
    with pytest.raises(ValueError):
        Range([])


@pytest.mark.parametrize(
    "text",
    ["1.2.3.4", "x.1", ">=", "^", "~", "1.2-rc.1", "01.2", "1.2.3-", "a.b", ">=1.2.3 - 2", "1.2.3 -"],
    ids=["four", "wildnum", "opnoversion", "caret", "tilde", "partialpre", "zero", "emptypre", "letters", "ophyphen", "danglinghyphen"],
)
def test_invalid_ranges_raise(text):
    with pytest.raises(ValueError, match="invalid range"):
        Range.parse(text)


def test_build_metadata_in_range_is_validated_and_ignored():
    assert expand("1.2.3+build.5") == "1.2.3"
    with pytest.raises(ValueError, match="build metadata is empty"):
        Range.parse("1.2.3+")
    with pytest.raises(ValueError, match="invalid character"):
        Range.parse("1.2.3+bad!")


def test_invalid_range_error_names_the_field():
    with pytest.raises(ValueError, match="minor version '' is not a number"):
        Range.parse("1..2")


def test_range_parse_rejects_non_string():
    with pytest.raises(TypeError):
        Range.parse(1)

import operator

import pytest

from semverkit import Version, coerce, compare, compare_prerelease, is_valid, parse


# -- parsing ----------------------------------------------------------------

def test_parse_simple_release():
    v = Version.parse("1.2.3")
    assert (v.major, v.minor, v.patch) == (1, 2, 3)
    assert v.prerelease == ()
    assert v.build == ()


def test_parse_prerelease_identifiers_are_typed():
    v = Version.parse("1.0.0-alpha.1.x-y")
    assert v.prerelease == ("alpha", 1, "x-y")


def test_parse_build_metadata_keeps_strings():
    v = Version.parse("1.0.0+exp.sha.0051")
    assert v.build == ("exp", "sha", "0051")
    assert v.prerelease == ()


def test_parse_prerelease_and_build():
    v = Version.parse("2.0.0-rc.2+build.11")
    assert v.prerelease == ("rc", 2)
    assert v.build == ("build", "11")


def test_parse_accepts_zero_fields():
    assert Version.parse("0.0.0").release == (0, 0, 0)


def test_parse_hyphen_inside_prerelease():
    assert Version.parse("1.0.0-x-y-z.--").prerelease == ("x-y-z", "--")


def test_module_level_parse():
    assert parse("3.4.5") == Version(3, 4, 5)


@pytest.mark.parametrize(
    "text",
    ["", "1", "1.2", "1.2.3.4", "v1.2.3", " 1.2.3", "1.2.3 ", "1.2.x", "a.b.c", "-1.2.3"],
    ids=["empty", "major", "minor", "four", "vprefix", "lspace", "rspace", "x", "letters", "neg"],
)
def test_parse_rejects_malformed_core(text):
    with pytest.raises(ValueError):
        Version.parse(text)


def test_parse_rejects_leading_zero_in_core():
    with pytest.raises(ValueError, match="leading zeros"):
        Version.parse("1.02.3")


def test_parse_rejects_leading_zero_in_numeric_prerelease():
    with pytest.raises(ValueError, match="leading zeros"):
        Version.parse("1.2.3-rc.01")


def test_parse_allows_leading_zero_in_alphanumeric_prerelease():
    assert Version.parse("1.2.3-0a").prerelease == ("0a",)


def test_parse_allows_single_zero_prerelease():
    assert Version.parse("1.2.3-0").prerelease == (0,)


def test_parse_rejects_empty_prerelease_identifier():
    with pytest.raises(ValueError, match="must not be empty"):
        Version.parse("1.2.3-rc..1")


def test_parse_rejects_empty_prerelease_and_build():
    with pytest.raises(ValueError, match="pre-release is empty"):
        Version.parse("1.2.3-")
    with pytest.raises(ValueError, match="build metadata is empty"):
        Version.parse("1.2.3+")


def test_parse_rejects_invalid_characters():
    with pytest.raises(ValueError, match="invalid character '_'"):
        Version.parse("1.2.3-rc_1")
    with pytest.raises(ValueError, match="invalid character"):
        Version.parse("1.2.3+build!")


def test_parse_error_message_names_input():
    with pytest.raises(ValueError, match=r"invalid version '1\.2'.*MAJOR\.MINOR\.PATCH"):
        Version.parse("1.2")


def test_parse_rejects_non_string():
    with pytest.raises(TypeError):
        Version.parse(123)


def test_is_valid():
    assert is_valid("1.0.0-rc.1+b") is True
    assert is_valid("1.0") is False
    assert is_valid(None) is False


# -- construction -----------------------------------------------------------

def test_constructor_defaults():
    v = Version(4)
    assert v.release == (4, 0, 0)
    assert v.prerelease == ()


def test_constructor_accepts_prerelease_string():
    assert Version(1, 2, 3, "beta.2").prerelease == ("beta", 2)


def test_constructor_accepts_build_string():
    v = Version(1, 2, 3, build="b.01")
    assert v.build == ("b", "01")
    assert str(v) == "1.2.3+b.01"


def test_constructor_normalizes_numeric_string_identifiers():
    assert Version(1, 2, 3, ["rc", "7"], ["b", 5]).prerelease == ("rc", 7)
    assert Version(1, 2, 3, ["rc", "7"], ["b", 5]).build == ("b", "5")


def test_constructor_rejects_negative_fields():
    with pytest.raises(ValueError, match="minor must not be negative"):
        Version(1, -1, 0)


def test_constructor_rejects_non_int_fields():
    with pytest.raises(TypeError):
        Version("1", 0, 0)
    with pytest.raises(TypeError):
        Version(True, 0, 0)


def test_constructor_rejects_bad_prerelease_items():
    with pytest.raises(ValueError):
        Version(1, 0, 0, [-1])
    with pytest.raises(TypeError):
        Version(1, 0, 0, [1.5])
    with pytest.raises(TypeError):
        Version(1, 0, 0, [True])


def test_version_is_immutable():
    v = Version(1, 2, 3)
    with pytest.raises(AttributeError):
        v.major = 2


def test_replace_returns_new_version():
    v = Version.parse("1.2.3-rc.1")
    assert v.replace(patch=9, prerelease=()) == Version(1, 2, 9)
    assert v == Version.parse("1.2.3-rc.1")


# -- properties and formatting ----------------------------------------------

def test_is_prerelease():
    assert Version.parse("1.0.0-0").is_prerelease
    assert not Version.parse("1.0.0+build").is_prerelease


def test_is_stable():
    assert Version.parse("1.0.0").is_stable
    assert not Version.parse("0.9.0").is_stable
    assert not Version.parse("2.0.0-rc.1").is_stable


def test_str_round_trips():
    for text in ["0.0.1", "1.2.3-rc.1", "1.2.3+b.01", "10.20.30-a.b.0+x-y"]:
        assert str(Version.parse(text)) == text


def test_repr():
    assert repr(Version(1, 2, 3, "rc.1")) == "Version('1.2.3-rc.1')"


# -- precedence ---------------------------------------------------------------

def test_core_fields_compare_numerically():
    assert Version.parse("1.10.0") > Version.parse("1.9.0")
    assert Version.parse("2.0.0") > Version.parse("1.99.99")
    assert Version.parse("1.2.10") > Version.parse("1.2.9")


def test_prerelease_has_lower_precedence_than_release():
    assert Version.parse("1.0.0-rc.1") < Version.parse("1.0.0")
    assert Version.parse("1.0.0") > Version.parse("1.0.0-rc.1")


def test_numeric_prerelease_identifiers_compare_numerically():
    assert Version.parse("1.0.0-beta.2") < Version.parse("1.0.0-beta.11")


def test_numeric_identifier_sorts_before_alphanumeric():
    assert Version.parse("1.0.0-1") < Version.parse("1.0.0-alpha")
    assert Version.parse("1.0.0-rc.9") < Version.parse("1.0.0-rc.a")


def test_alphanumeric_identifiers_compare_in_ascii_order():
    assert Version.parse("1.0.0-Beta") < Version.parse("1.0.0-alpha")
    assert Version.parse("1.0.0-alpha") < Version.parse("1.0.0-beta")


def test_shorter_prerelease_sorts_first_when_prefix_equal():
    assert Version.parse("1.0.0-alpha") < Version.parse("1.0.0-alpha.1")
    assert Version.parse("1.0.0-alpha.1.0") > Version.parse("1.0.0-alpha.1")


def test_spec_precedence_example():
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ]
    versions = [Version.parse(text) for text in ordered]
    for lower, higher in zip(versions, versions[1:]):
        assert lower < higher
        assert higher > lower
        assert lower != higher


def test_build_metadata_ignored_for_equality_and_hash():
    a = Version.parse("1.0.0+a")
    b = Version.parse("1.0.0+b")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_equal_versions_hash_equal_and_unequal_differ():
    assert hash(Version.parse("1.2.3-rc.1")) == hash(Version(1, 2, 3, "rc.1"))
    assert Version.parse("1.2.3") != Version.parse("1.2.3-0")
    assert hash(Version(1, 0, 0)) != hash(Version(2, 0, 0))
    assert len({Version(1, 0, 0), Version(1, 0, 1), Version(1, 1, 0)}) == 3


def test_rich_comparisons_on_equal_versions():
    a = Version.parse("3.1.4")
    b = Version.parse("3.1.4+meta")
    assert a <= b and a >= b
    assert not (a < b) and not (a > b)
    assert not (a != b)


def test_comparison_with_other_types():
    v = Version(1, 0, 0)
    assert v != "1.0.0"
    assert (v == "1.0.0") is False
    assert (v == (1, 0, 0)) is False
    for compare_op in (operator.lt, operator.le, operator.gt, operator.ge):
        with pytest.raises(TypeError):
            compare_op(v, "2.0.0")


def test_compare_method_and_function():
    assert Version(1, 0, 0).compare(Version(1, 0, 1)) == -1
    assert Version(1, 0, 1).compare(Version(1, 0, 0)) == 1
    assert compare("1.0.0+x", "1.0.0") == 0
    assert compare(Version(2, 0, 0), "10.0.0") == -1


def test_compare_prerelease_function():
    assert compare_prerelease((), ()) == 0
    assert compare_prerelease((), ("rc",)) == 1
    assert compare_prerelease(("rc",), ()) == -1
    assert compare_prerelease(("rc", 1), ("rc", 1)) == 0
    assert compare_prerelease(("rc", 1), ("rc", 2)) == -1
    assert compare_prerelease(("rc", 1, "a"), ("rc", 1)) == 1


def test_compare_prerelease_mixed_identifier_kinds():
    assert compare_prerelease((7,), ("a",)) == -1
    assert compare_prerelease(("a",), (7,)) == 1


def test_sorting_mixed_versions():
    texts = ["1.0.0", "0.1.0", "1.0.0-rc.1", "0.10.0", "0.2.0"]
    result = [str(v) for v in sorted(Version.parse(t) for t in texts)]
    assert result == ["0.1.0", "0.2.0", "0.10.0", "1.0.0-rc.1", "1.0.0"]


# -- coerce -------------------------------------------------------------------

def test_coerce_fills_missing_fields():
    assert coerce("1") == Version(1, 0, 0)
    assert coerce("1.2") == Version(1, 2, 0)


def test_coerce_strips_prefixes_and_whitespace():
    assert coerce("v1.2") == Version(1, 2, 0)
    assert coerce(" =1.2.3 ") == Version(1, 2, 3)
    assert coerce("=v2") == Version(2, 0, 0)
    assert coerce("V 3.1") == Version(3, 1, 0)


def test_coerce_tolerates_leading_zeros():
    assert str(coerce("01.002.0003")) == "1.2.3"


def test_coerce_keeps_prerelease_and_build_of_full_version():
    v = coerce("v1.2.3-rc.1+b7")
    assert v.prerelease == ("rc", 1)
    assert v.build == ("b7",)


def test_coerce_rejects_suffix_without_patch():
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        coerce("1.2-rc.1")


def test_coerce_rejects_garbage():
    for text in ["", "v", "abc", "1.2.3.4", "1.x", "1.2.3rc1"]:
        with pytest.raises(ValueError):
            coerce(text)


def test_coerce_passes_versions_through_and_rejects_other_types():
    v = Version(1, 2, 3)
    assert coerce(v) is v
    with pytest.raises(TypeError):
        coerce(1.2)

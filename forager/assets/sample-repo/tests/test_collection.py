import pytest

from semverkit import (
    Range,
    Version,
    VersionSet,
    filter_satisfying,
    latest_per_major,
    max_satisfying,
    min_satisfying,
    sort_versions,
)

RELEASES = ["1.0.0", "1.2.0", "1.2.5", "1.10.0", "2.0.0-rc.1", "2.0.0", "2.1.3", "0.9.0"]


def strs(versions):
    return [str(version) for version in versions]


def test_sort_versions_ascending():
    assert strs(sort_versions(["1.10.0", "1.2.0", "1.9.0", "0.1.0"])) == [
        "0.1.0",
        "1.2.0",
        "1.9.0",
        "1.10.0",
    ]


def test_sort_versions_reverse():
    assert strs(sort_versions(["1.0.0", "2.0.0-rc.1", "2.0.0"], reverse=True)) == [
        "2.0.0",
        "2.0.0-rc.1",
        "1.0.0",
    ]


def test_sort_versions_is_stable_for_build_metadata():
    assert strs(sort_versions(["1.0.0+b", "0.5.0", "1.0.0+a"])) == ["0.5.0", "1.0.0+b", "1.0.0+a"]


def test_sort_versions_accepts_version_objects_and_empty_input():
    assert sort_versions([Version(2, 0, 0), "1.0.0"]) == [Version(1, 0, 0), Version(2, 0, 0)]
    assert sort_versions([]) == []


def test_sort_versions_rejects_invalid():
    with pytest.raises(ValueError):
        sort_versions(["1.0.0", "1.0"])


def test_filter_satisfying_keeps_input_order():
    assert strs(filter_satisfying(RELEASES, "^1.2")) == ["1.2.0", "1.2.5", "1.10.0"]


def test_filter_satisfying_include_prerelease():
    assert strs(filter_satisfying(RELEASES, ">=2.0.0-0 <2.1.0")) == ["2.0.0-rc.1", "2.0.0"]
    assert strs(filter_satisfying(RELEASES, "2.x")) == ["2.0.0", "2.1.3"]
    assert strs(filter_satisfying(RELEASES, ">=1.5", include_prerelease=True)) == [
        "1.10.0",
        "2.0.0-rc.1",
        "2.0.0",
        "2.1.3",
    ]


def test_max_satisfying():
    assert str(max_satisfying(RELEASES, "^1.0.0")) == "1.10.0"
    assert str(max_satisfying(RELEASES, "~1.2")) == "1.2.5"
    assert str(max_satisfying(RELEASES, "*")) == "2.1.3"


def test_max_satisfying_none_when_nothing_matches():
    assert max_satisfying(RELEASES, "^3.0.0") is None
    assert max_satisfying([], "*") is None


def test_max_satisfying_skips_prereleases_by_default():
    versions = ["1.0.0", "1.1.0-beta.1"]
    assert str(max_satisfying(versions, "^1.0.0")) == "1.0.0"
    assert str(max_satisfying(versions, "^1.0.0", include_prerelease=True)) == "1.1.0-beta.1"


def test_min_satisfying():
    assert str(min_satisfying(RELEASES, "^1.0.0")) == "1.0.0"
    assert str(min_satisfying(RELEASES, ">1.2.0")) == "1.2.5"
    assert str(min_satisfying(RELEASES, "*")) == "0.9.0"
    assert min_satisfying(RELEASES, "<0.1") is None


def test_min_satisfying_with_prerelease_bound():
    assert str(min_satisfying(RELEASES, ">=2.0.0-rc.1")) == "2.0.0-rc.1"


def test_helpers_accept_range_objects():
    r = Range.parse("1.2.x")
    assert str(max_satisfying(RELEASES, r)) == "1.2.5"
    assert str(min_satisfying(RELEASES, r)) == "1.2.0"
    assert str(max_satisfying(["1.2.9-rc.1"], r, include_prerelease=True)) == "1.2.9-rc.1"
    assert str(max_satisfying(["1.2.0", "1.2.9-rc.1"], r)) == "1.2.0"
    assert r.include_prerelease is False


def test_equal_versions_keep_the_first_one_seen():
    versions = ["1.0.0+a", "1.0.0+b"]
    assert max_satisfying(versions, "*").build == ("a",)
    assert min_satisfying(versions, "*").build == ("a",)
    assert latest_per_major(versions)[1].build == ("a",)


def test_latest_per_major():
    result = latest_per_major(RELEASES)
    assert list(result) == [0, 1, 2]
    assert {major: str(v) for major, v in result.items()} == {0: "0.9.0", 1: "1.10.0", 2: "2.1.3"}


def test_latest_per_major_order_independent():
    result = latest_per_major(["3.1.0", "1.0.0", "3.0.5", "1.0.1", "3.0.9"])
    assert list(result) == [1, 3]
    assert str(result[3]) == "3.1.0"
    assert str(result[1]) == "1.0.1"


def test_latest_per_major_prereleases():
    versions = ["1.0.0", "2.0.0-rc.1", "1.1.0-beta"]
    assert strs(latest_per_major(versions).values()) == ["1.0.0"]
    assert strs(latest_per_major(versions, include_prerelease=True).values()) == [
        "1.1.0-beta",
        "2.0.0-rc.1",
    ]


def test_version_set_sorted_and_deduplicated():
    vs = VersionSet(["2.0.0", "1.0.0", "2.0.0+build", "1.5.0"])
    assert len(vs) == 3
    assert strs(vs) == ["1.0.0", "1.5.0", "2.0.0"]


def test_version_set_add_update_discard():
    vs = VersionSet()
    assert vs.add("1.0.0") is True
    assert vs.add(Version(1, 0, 0)) is False
    assert vs.update(["1.0.0", "1.1.0", "1.2.0"]) == 2
    assert vs.discard("1.1.0") is True
    assert vs.discard("1.1.0") is False
    assert strs(vs) == ["1.0.0", "1.2.0"]


def test_version_set_contains():
    vs = VersionSet(["1.0.0", "2.0.0-rc.1"])
    assert "1.0.0" in vs
    assert "1.0.0+meta" in vs
    assert Version(2, 0, 0, "rc.1") in vs
    assert "2.0.0" not in vs
    assert "not a version" not in vs
    assert [1, 0, 0] not in vs


def test_version_set_latest_and_oldest():
    vs = VersionSet(["0.1.0-alpha", "0.1.0", "1.0.0", "2.0.0-rc.1"])
    assert str(vs.latest()) == "1.0.0"
    assert str(vs.latest(include_prerelease=True)) == "2.0.0-rc.1"
    assert str(vs.oldest()) == "0.1.0"
    assert str(vs.oldest(include_prerelease=True)) == "0.1.0-alpha"


def test_empty_version_set():
    vs = VersionSet()
    assert len(vs) == 0
    assert vs.latest() is None
    assert vs.oldest() is None
    assert list(vs) == []


def test_version_set_satisfying():
    vs = VersionSet(RELEASES)
    subset = vs.satisfying("<1.5")
    assert isinstance(subset, VersionSet)
    assert strs(subset) == ["0.9.0", "1.0.0", "1.2.0", "1.2.5"]
    assert len(vs) == len(RELEASES)


def test_version_set_repr():
    assert repr(VersionSet(["1.1.0", "1.0.0"])) == "VersionSet(['1.0.0', '1.1.0'])"

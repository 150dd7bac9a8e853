import pytest

from semverkit import (
    BUMP_KINDS,
    DEFAULT_LABEL,
    Version,
    bump,
    bump_major,
    bump_minor,
    bump_patch,
    bump_premajor,
    bump_preminor,
    bump_prepatch,
    bump_prerelease,
    finalize,
    next_version,
)


def s(version):
    return str(version)


def test_bump_major_resets_minor_and_patch():
    assert s(bump_major("1.2.3")) == "2.0.0"


def test_bump_major_from_zero():
    assert s(bump_major("0.9.9")) == "1.0.0"


def test_bump_major_finalizes_major_prerelease():
    assert s(bump_major("2.0.0-rc.1")) == "2.0.0"


def test_bump_major_on_other_prerelease_moves_on():
    assert s(bump_major("1.2.0-rc.1")) == "2.0.0"
    assert s(bump_major("1.0.1-rc.1")) == "2.0.0"


def test_bump_minor_resets_patch():
    assert s(bump_minor("1.2.3")) == "1.3.0"


def test_bump_minor_finalizes_minor_prerelease():
    assert s(bump_minor("1.3.0-beta")) == "1.3.0"
    assert s(bump_minor("2.0.0-beta")) == "2.0.0"


def test_bump_minor_on_patch_prerelease_moves_on():
    assert s(bump_minor("1.2.3-beta")) == "1.3.0"


def test_bump_patch():
    assert s(bump_patch("1.2.3")) == "1.2.4"


def test_bump_patch_finalizes_prerelease():
    assert s(bump_patch("1.2.4-rc.3")) == "1.2.4"


def test_bumps_drop_build_metadata():
    assert bump_patch("1.2.3+build.5").build == ()
    assert bump_minor("1.2.3+build.5").build == ()
    assert bump_major("1.2.3+build.5").build == ()


def test_bump_accepts_version_objects():
    assert bump_patch(Version(0, 0, 1)) == Version(0, 0, 2)


def test_bump_rejects_invalid_version_string():
    with pytest.raises(ValueError):
        bump_patch("1.2")


def test_finalize():
    assert s(finalize("1.2.4-rc.1+b")) == "1.2.4"
    assert s(finalize("1.2.4")) == "1.2.4"


def test_bump_prerelease_on_release_starts_default_label():
    assert DEFAULT_LABEL == "rc"
    assert s(bump_prerelease("1.2.3")) == "1.2.4-rc.0"


def test_bump_prerelease_on_release_with_label():
    assert s(bump_prerelease("1.2.3", "alpha")) == "1.2.4-alpha.0"


def test_bump_prerelease_increments_counter():
    assert s(bump_prerelease("1.2.4-rc.0")) == "1.2.4-rc.1"
    assert s(bump_prerelease("1.2.4-rc.9", "rc")) == "1.2.4-rc.10"


def test_bump_prerelease_increments_last_numeric_identifier():
    assert s(bump_prerelease("1.2.4-rc.1.pre")) == "1.2.4-rc.2.pre"
    assert s(bump_prerelease("1.2.4-1.2")) == "1.2.4-1.3"


def test_bump_prerelease_appends_counter_when_missing():
    assert s(bump_prerelease("1.2.4-beta")) == "1.2.4-beta.0"


def test_bump_prerelease_switches_to_higher_label():
    assert s(bump_prerelease("1.2.4-alpha.3", "beta")) == "1.2.4-beta.0"


def test_bump_prerelease_refuses_to_go_backwards():
    with pytest.raises(ValueError, match="would not increase"):
        bump_prerelease("1.2.4-rc.0", "alpha")


def test_bump_prerelease_rejects_bad_labels():
    with pytest.raises(ValueError):
        bump_prerelease("1.2.3", "")
    with pytest.raises(ValueError):
        bump_prerelease("1.2.3", "12")
    with pytest.raises(ValueError):
        bump_prerelease("1.2.3", "rc.1")
    with pytest.raises(TypeError):
        bump_prerelease("1.2.3", 5)


def test_bump_premajor_preminor_prepatch():
    assert s(bump_premajor("1.2.3")) == "2.0.0-rc.0"
    assert s(bump_preminor("1.2.3", "beta")) == "1.3.0-beta.0"
    assert s(bump_prepatch("1.2.3", "dev")) == "1.2.4-dev.0"


def test_bump_pre_kinds_ignore_existing_prerelease():
    assert s(bump_prepatch("1.2.3-rc.4")) == "1.2.4-rc.0"


def test_bump_dispatches_on_kind():
    expected = {
        "major": "2.0.0",
        "minor": "1.3.0",
        "patch": "1.2.4",
        "premajor": "2.0.0-beta.0",
        "preminor": "1.3.0-beta.0",
        "prepatch": "1.2.4-beta.0",
        "prerelease": "1.2.4-beta.0",
        "release": "1.2.3",
    }
    assert set(expected) == set(BUMP_KINDS)
    for kind, result in expected.items():
        assert s(bump("1.2.3", kind, label="beta")) == result, kind


def test_bump_release_kind_finalizes():
    assert s(bump("3.0.0-rc.2", "release")) == "3.0.0"


def test_bump_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown bump kind 'huge'"):
        bump("1.2.3", "huge")


def test_next_version_single_changes():
    assert s(next_version("1.2.3", "fix")) == "1.2.4"
    assert s(next_version("1.2.3", "feature")) == "1.3.0"
    assert s(next_version("1.2.3", "breaking")) == "2.0.0"


def test_next_version_picks_most_significant_change():
    assert s(next_version("1.2.3", ["fix", "feature", "fix"])) == "1.3.0"
    assert s(next_version("1.2.3", ("feature", "breaking"))) == "2.0.0"


def test_next_version_during_initial_development():
    assert s(next_version("0.4.1", "breaking")) == "0.5.0"
    assert s(next_version("0.4.1", "feature")) == "0.4.2"
    assert s(next_version("0.4.1", "fix")) == "0.4.2"


def test_next_version_finalizes_prerelease():
    assert s(next_version("2.0.0-rc.1", "breaking")) == "2.0.0"


def test_next_version_rejects_unknown_or_empty_changes():
    with pytest.raises(ValueError, match="unknown change kind"):
        next_version("1.0.0", ["fix", "docs"])
    with pytest.raises(ValueError, match="at least one change"):
        next_version("1.0.0", [])

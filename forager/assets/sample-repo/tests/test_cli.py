import os
import subprocess
import sys

import semverkit
from semverkit.cli import build_parser, main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_prints_minus_one_zero_one(capsys):
    assert run(capsys, "compare", "1.2.3", "1.10.0") == (0, "-1\n", "")
    assert run(capsys, "compare", "1.0.0+a", "1.0.0+b") == (0, "0\n", "")
    assert run(capsys, "compare", "2.0.0", "2.0.0-rc.1") == (0, "1\n", "")


def test_compare_invalid_version_is_an_error(capsys):
    code, out, err = run(capsys, "compare", "1.2", "1.2.3")
    assert code == 2
    assert out == ""
    assert "invalid version '1.2'" in err


def test_bump_command(capsys):
    assert run(capsys, "bump", "minor", "1.2.3") == (0, "1.3.0\n", "")
    assert run(capsys, "bump", "patch", "1.2.3") == (0, "1.2.4\n", "")


def test_bump_command_with_label(capsys):
    code, out, _ = run(capsys, "bump", "prerelease", "1.2.3", "--label", "beta")
    assert (code, out) == (0, "1.2.4-beta.0\n")


def test_bump_command_rejects_unknown_kind(capsys):
    code, _, err = run(capsys, "bump", "huge", "1.2.3")
    assert code == 2
    assert "invalid choice" in err


def test_satisfies_exit_codes(capsys):
    assert run(capsys, "satisfies", "1.4.0", "^1.2") == (0, "", "")
    assert run(capsys, "satisfies", "2.0.0", "^1.2") == (1, "", "")


def test_satisfies_include_prerelease_flag(capsys):
    assert run(capsys, "satisfies", "1.5.0-rc.1", "^1.2")[0] == 1
    assert run(capsys, "satisfies", "--include-prerelease", "1.5.0-rc.1", "^1.2")[0] == 0


def test_satisfies_invalid_range(capsys):
    code, _, err = run(capsys, "satisfies", "1.0.0", ">=")
    assert code == 2
    assert "invalid range" in err


def test_sort_command(capsys):
    code, out, _ = run(capsys, "sort", "1.10.0", "1.2.0", "1.9.0-rc.1", "1.9.0")
    assert code == 0
    assert out.split() == ["1.2.0", "1.9.0-rc.1", "1.9.0", "1.10.0"]


def test_sort_command_reverse(capsys):
    code, out, _ = run(capsys, "sort", "-r", "0.1.0", "0.3.0", "0.2.0")
    assert out.split() == ["0.3.0", "0.2.0", "0.1.0"]


def test_max_command(capsys):
    assert run(capsys, "max", "<2", "1.0.0", "1.5.0", "2.0.0") == (0, "1.5.0\n", "")


def test_max_command_without_match(capsys):
    assert run(capsys, "max", "^3", "1.0.0", "2.0.0") == (1, "", "")


def test_max_command_include_prerelease(capsys):
    code, out, _ = run(capsys, "max", "-p", "^1", "1.0.0", "1.1.0-rc.1")
    assert (code, out) == (0, "1.1.0-rc.1\n")


def test_min_command(capsys):
    assert run(capsys, "min", ">=1.2", "1.0.0", "1.5.0", "1.2.1") == (0, "1.2.1\n", "")
    assert run(capsys, "min", ">=9", "1.0.0") == (1, "", "")


def test_valid_command(capsys):
    assert run(capsys, "valid", "1.0.0", "2.0.0-rc.1+b") == (0, "", "")
    code, _, err = run(capsys, "valid", "1.0.0", "1.0", "v2.0.0")
    assert code == 1
    assert err.splitlines() == ["invalid: 1.0", "invalid: v2.0.0"]


def test_missing_command_is_usage_error(capsys):
    code, _, err = run(capsys)
    assert code == 2
    assert "usage:" in err


def test_version_flag(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"semverkit {semverkit.__version__}"


def test_build_parser_knows_all_commands():
    parser = build_parser()
    args = parser.parse_args(["max", "^1", "1.0.0", "1.1.0"])
    assert args.command == "max"
    assert args.versions == ["1.0.0", "1.1.0"]
    assert args.include_prerelease is False


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "semverkit", "bump", "patch", "0.1.9"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout == "0.1.10\n"


def test_package_version_matches_metadata():
    assert semverkit.__version__ == "1.0.0"


def test_public_api_is_exported():
    for name in semverkit.__all__:
        assert hasattr(semverkit, name), name

"""swebench's specs from every source Forager reads them from: JSON/YAML spec files with their overlays,
swebench 4.x's constants/python.py and its wheel, the installed swebench; and the errors that say what to do."""

from __future__ import annotations

import json
import textwrap
import zipfile

import pytest

from forager.core import ForagerError
from forager.eval.specs import DEFAULT_PARSERS, InstanceSpec, default_parser, load_specs, overlay

# swebench 4.x's constants/python.py in miniature: constants, dict comprehensions, updates, no imports.
PYTHON_PY = textwrap.dedent('''
    TEST_PYTEST = "pytest -rA"
    TEST_SPHINX = "tox --current-env -epy39 -v --"
    SPECS_PYTEST = {
        k: {"python": "3.9", "install": "python -m pip install -e .", "test_cmd": TEST_PYTEST}
        for k in ["5.3", "5.4"]
    }
    SPECS_PYTEST["5.4"]["pip_packages"] = ["py==1.11.0", "pluggy==0.13.1"]
    SPECS_SPHINX = {
        k: {"python": "3.9", "pip_packages": ["tox==4.16.0"], "install": "python -m pip install -e .[test]",
            "pre_install": ["sed -i 's/pytest/pytest -rA/' tox.ini"], "test_cmd": TEST_SPHINX}
        for k in ["3.0", "3.1"]
    }
    SPECS_DJANGO = {"3.0": {"python": "3.6", "packages": "requirements.txt", "install": "python -m pip install -e .",
                            "test_cmd": ["./tests/runtests.py --verbosity 2", "echo done"], "nano_cpus": 2}}
    MAP_REPO_VERSION_TO_SPECS_PY = {
        "pytest-dev/pytest": SPECS_PYTEST,
        "sphinx-doc/sphinx": SPECS_SPHINX,
        "django/django": SPECS_DJANGO,
    }
''')


@pytest.fixture
def python_py(tmp_path):
    path = tmp_path / "python.py"
    path.write_text(PYTHON_PY)
    return path


def test_swebench_4_python_py(python_py):
    table = load_specs(python_py)
    assert table.repos() == ["django/django", "pytest-dev/pytest", "sphinx-doc/sphinx"]
    spec = table.get("pytest-dev/pytest", "5.4")
    assert spec.python == "3.9" and spec.pip_packages == ["py==1.11.0", "pluggy==0.13.1"]
    assert spec.install == "python -m pip install -e ." and spec.test_cmd == "pytest -rA"
    assert table.get("pytest-dev/pytest", "5.3").pip_packages == []
    sphinx = table.get("sphinx-doc/sphinx", "3.1")
    assert sphinx.pre_install == ["sed -i 's/pytest/pytest -rA/' tox.ini"]
    assert sphinx.log_parser == "parse_log_sphinx"  # swebench 4's default parser for the repository
    django = table.get("django/django", "3.0")
    assert django.packages == "requirements.txt"
    assert django.test_command == "./tests/runtests.py --verbosity 2 && echo done"
    assert django.model_dump()["nano_cpus"] == 2  # fields Forager does not know are kept


def test_swebench_4_wheel(tmp_path):
    wheel = tmp_path / "swebench-4.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("swebench/harness/constants/python.py", PYTHON_PY)
        archive.writestr("swebench/__init__.py", "import nothing_that_exists\n")  # never imported
    assert load_specs(wheel).get("sphinx-doc/sphinx", "3.0").test_cmd == "tox --current-env -epy39 -v --"
    empty = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("other/__init__.py", "")
    with pytest.raises(ForagerError, match="not a swebench 4.x wheel"):
        load_specs(empty)


def test_json_and_yaml_files(tmp_path):
    spec = {"python": "3.11", "pip_packages": ["pytest"], "install": "python -m pip install -e .",
            "test_cmd": "pytest -rA", "log_parser": "parse_log_pytest_v2"}
    (tmp_path / "specs.json").write_text(json.dumps({"o/n": {"0.1": spec}}))
    fields = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in spec.items())
    (tmp_path / "specs.yaml").write_text("o/n:\n  '0.1':\n" + fields)
    for name in ("specs.json", "specs.yaml"):
        got = load_specs(tmp_path / name).get("o/n", "0.1")
        assert got.python == "3.11" and got.pip_packages == ["pytest"] and got.log_parser == "parse_log_pytest_v2"
    assert load_specs(tmp_path / "specs.json").source == str(tmp_path / "specs.json")


def test_an_overlay_extends_another_source(tmp_path, python_py):
    (tmp_path / "overlay.yaml").write_text(textwrap.dedent("""
        extends: python.py
        sphinx-doc/sphinx:
          "*": {extra_requirements: ["docutils<0.22"]}
          "3.1": {python: "3.11"}
        o/new:
          "1.0": {python: "3.11", test_cmd: "pytest"}
    """))
    table = load_specs(tmp_path / "overlay.yaml")
    assert table.get("sphinx-doc/sphinx", "3.0").extra_requirements == ["docutils<0.22"]
    three_one = table.get("sphinx-doc/sphinx", "3.1")
    assert three_one.python == "3.11" and three_one.extra_requirements == ["docutils<0.22"]
    assert three_one.pip_packages == ["tox==4.16.0"]  # the fields it does not name stay swebench's
    assert table.get("pytest-dev/pytest", "5.4").extra_requirements == []
    assert table.get("o/new", "1.0").log_parser == "parse_log_pytest"  # a repository swebench does not know
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ForagerError, match="extends itself"):
        load_specs(tmp_path / "loop.yaml")


def test_overlay_merges_fields_per_version():
    base = {"r": {"1": {"python": "3.9", "install": "a"}, "2": {"python": "3.9"}}}
    merged = overlay(base, {"r": {"1": {"install": "b"}, "*": {"test_cmd": "t"}}, "s": {"1": {"python": "3.11"}}})
    assert merged == {"r": {"1": {"python": "3.9", "install": "b", "test_cmd": "t"},
                            "2": {"python": "3.9", "test_cmd": "t"}},
                      "s": {"1": {"python": "3.11"}}}
    assert base["r"]["1"]["install"] == "a"  # the base is not changed


def test_missing_specs_say_what_is_known(python_py):
    table = load_specs(python_py)
    with pytest.raises(ForagerError) as err:
        table.get("sphinx-doc/sphinx", "9.9")
    assert "sphinx-doc/sphinx" in str(err.value) and "9.9" in str(err.value) and "3.0, 3.1" in str(err.value)
    with pytest.raises(ForagerError, match=r"no swebench spec for the repository 'o/unknown'.*--specs FILE"):
        table.get("o/unknown", "1.0")


def test_bad_spec_files(tmp_path):
    with pytest.raises(ForagerError, match="does not exist"):
        load_specs(tmp_path / "nope.json")
    (tmp_path / "float.yaml").write_text("o/n:\n  '1':\n    python: 3.10\n")
    with pytest.raises(ForagerError, match=r"o/n version 1 is invalid: python: .*quoted version"):
        load_specs(tmp_path / "float.yaml")
    (tmp_path / "flat.json").write_text(json.dumps({"o/n": {"python": "3.9"}}))
    with pytest.raises(ForagerError, match="must map versions to specs"):
        load_specs(tmp_path / "flat.json")
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(ForagerError, match="MAP_REPO_VERSION_TO_SPECS_PY"):
        load_specs(tmp_path / "empty.py")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ForagerError, match="RuntimeError: boom"):
        load_specs(tmp_path / "broken.py")


def test_the_installed_swebench(monkeypatch):
    constants = pytest.importorskip("swebench.harness.constants")
    monkeypatch.delattr(constants, "MAP_REPO_VERSION_TO_SPECS", raising=False)
    with pytest.raises(ForagerError, match=r"ships no specs.*--specs FILE.*pip download swebench==4.1.0"):
        load_specs()
    monkeypatch.setattr(constants, "MAP_REPO_VERSION_TO_SPECS",
                        {"psf/requests": {"2.0": {"python": "3.9", "test_cmd": "pytest -rA"}}}, raising=False)
    table = load_specs()
    assert table.get("psf/requests", "2.0").log_parser == "parse_log_requests"
    assert table.source == "the installed swebench"


def test_default_parsers_are_swebench_5_parsers():
    registry = pytest.importorskip("swebench.harness.log_parsers").PARSER_REGISTRY
    assert set(DEFAULT_PARSERS.values()) <= set(registry)
    assert default_parser("someone/else") == "parse_log_pytest"
    assert InstanceSpec(python="3.9", test_cmd=["a", "b"]).test_command == "a && b"

"""Mutate-fix bug planting: exact edits per operator, and formatting kept on the real sample repository."""

from __future__ import annotations

import ast
import difflib
from pathlib import Path

import pytest

from forager.tasks.mutate import OPERATORS, FunctionInfo, Mutation, enumerate_mutations, find_functions

SAMPLE_FILES = sorted((Path(__file__).parents[1] / "forager" / "assets" / "sample-repo" / "semverkit").glob("*.py"))


def mutated(source: str, operator: str) -> list[str]:
    """The mutated sources one operator gives, each checked to parse and differ from `source` in its AST."""
    mutations = enumerate_mutations(source, [operator])
    for mutation in mutations:
        assert mutation.operator == operator
        assert ast.dump(ast.parse(mutation.source)) != ast.dump(ast.parse(source))
    return [mutation.source for mutation in mutations]


def test_find_functions():
    source = (
        "class A:\n"
        "    @property\n"
        "    def x(self):\n"
        '        """Doc."""\n'
        "        return 1\n"
        "\n"
        "async def outer():\n"
        "    def inner(): pass\n"
        "    return inner\n"
    )
    assert find_functions(source) == [
        FunctionInfo("A.x", 3, 5, 5), FunctionInfo("outer", 7, 9, 8), FunctionInfo("outer.inner", 8, 8, 8),
    ]


@pytest.mark.parametrize(("source", "expected"), [
    ("def f(a, b):\n    if a < b:\n        return 1\n", ["def f(a, b):\n    if a <= b:\n        return 1\n"]),
    ("def f(a, b):\n    return a >= b > 2\n", ["def f(a, b):\n    return a > b > 2\n"]),
    ('def f(a, b):\n    s = "é"; return a  is  not b  # ü\n', ['def f(a, b):\n    s = "é"; return a  is b  # ü\n']),
    ("def f(a, b):\n    # héllo\n    return (a) not in b\n", ["def f(a, b):\n    # héllo\n    return (a) in b\n"]),
])
def test_replace_compare(source, expected):
    assert mutated(source, "replace_compare") == expected


def test_replace_binop_token_between_operands():
    source = 'def f(a, b):\n    x = "ü" + a  # é\n    x //= 2\n    return (a  # left\n            * (b)) % "s"\n'
    assert mutated(source, "replace_binop") == [
        'def f(a, b):\n    x = "ü" - a  # é\n    x //= 2\n    return (a  # left\n            * (b)) % "s"\n',
        'def f(a, b):\n    x = "ü" + a  # é\n    x /= 2\n    return (a  # left\n            * (b)) % "s"\n',
        'def f(a, b):\n    x = "ü" + a  # é\n    x //= 2\n    return (a  # left\n            / (b)) % "s"\n',
        'def f(a, b):\n    x = "ü" + a  # é\n    x //= 2\n    return (a  # left\n            * (b)) // "s"\n',
    ]
    assert mutated('def f(x):\n    return "%s" % x\n', "replace_binop") == []  # formatting, not arithmetic


def test_replace_boolop_swaps_the_first_operator_only():
    assert mutated("def f(a, b, c):\n    return a and b and c\n", "replace_boolop") == [
        "def f(a, b, c):\n    return a or b and c\n",
    ]


def test_replace_unaryop():
    source = "def f(a, b):\n    x = 'é' if not (a) else -b\n    return ~a + +b\n"
    assert mutated(source, "replace_unaryop") == [
        "def f(a, b):\n    x = 'é' if (a) else -b\n    return ~a + +b\n",
        "def f(a, b):\n    x = 'é' if not (a) else b\n    return ~a + +b\n",
        "def f(a, b):\n    x = 'é' if not (a) else -b\n    return a + +b\n",
    ]


def test_change_constant():
    source = 'def f(x=0, y=True):\n    """Doc 1."""\n    s = "ä"; return x[1] + 0x10 - 1 + 2.5 + "3"\n'
    assert mutated("def f(x):\n    return x - -1 + 1e300\n", "change_constant") == []  # `-1` and 1e300 + 1 left alone
    assert mutated(source, "change_constant") == [
        'def f(x=1, y=True):\n    """Doc 1."""\n    s = "ä"; return x[1] + 0x10 - 1 + 2.5 + "3"\n',
        'def f(x=0, y=False):\n    """Doc 1."""\n    s = "ä"; return x[1] + 0x10 - 1 + 2.5 + "3"\n',
        'def f(x=0, y=True):\n    """Doc 1."""\n    s = "ä"; return x[0] + 0x10 - 1 + 2.5 + "3"\n',
        'def f(x=0, y=True):\n    """Doc 1."""\n    s = "ä"; return x[1] + 17 - 1 + 2.5 + "3"\n',
        'def f(x=0, y=True):\n    """Doc 1."""\n    s = "ä"; return x[1] + 0x10 - 0 + 2.5 + "3"\n',
        'def f(x=0, y=True):\n    """Doc 1."""\n    s = "ä"; return x[1] + 0x10 - 1 + 3.5 + "3"\n',
    ]


def test_invert_if():
    source = "def f(a, b):\n    if a:\n        return 1\n    elif a or b:\n        return 2\n    if not b:\n        return 3\n"
    assert mutated(source, "invert_if") == [
        "def f(a, b):\n    if not a:\n        return 1\n    elif a or b:\n        return 2\n    if not b:\n        return 3\n",
        "def f(a, b):\n    if a:\n        return 1\n    elif not (a or b):\n        return 2\n    if not b:\n        return 3\n",
    ]


def test_shuffle_call_args():
    source = "def f(a, b):\n    g(a, a, b=b)\n    return h(a, a, (b))\n    k(*a, b)\n"
    assert mutated(source, "shuffle_call_args") == [
        "def f(a, b):\n    g(a, a, b=b)\n    return h(b, a, (a))\n    k(*a, b)\n",
    ]


def test_swap_variables_swaps_the_uses_of_the_first_three_pairs():
    """Only the reads change: swapping the bindings as well would be a rename, not a bug."""
    source = "class C:\n    def m(self, x, y=1):\n        z = x + y\n        w = lambda q: q\n        return z\n"
    result = mutated(source, "swap_variables")
    assert result[0] == "class C:\n    def m(self, x, y=1):\n        z = y + x\n        w = lambda q: q\n        return z\n"
    assert result[1] == "class C:\n    def m(self, x, y=1):\n        z = z + y\n        w = lambda q: q\n        return x\n"
    assert len(result) == 3


def test_remove_parameter():
    assert mutated("def f(a, b=1, *, c):\n    return a\n", "remove_parameter") == [
        "def f(b=1, *, c):\n    return a\n", "def f(a, *, c):\n    return a\n", "def f(a, b=1):\n    return a\n",
    ]
    assert mutated("class A:\n    def m(self, *args, **kw):\n        pass\n", "remove_parameter") == []


def test_remove_parameter_multiline_signature():
    source = "def f(\n    a: int,\n    b: str = 'é',  # ü\n    c=None,\n) -> None:\n    return a\n"
    assert mutated(source, "remove_parameter") == [
        "def f(\n    b: str = 'é',  # ü\n    c=None,\n) -> None:\n    return a\n",
        "def f(\n    a: int,\n    c=None,\n) -> None:\n    return a\n",
        "def f(\n    a: int,\n    b: str = 'é',  # ü\n) -> None:\n    return a\n",
    ]
    assert mutated("def f(a, b,\n      c):\n    return a\n", "remove_parameter")[1] == "def f(a,\n      c):\n    return a\n"


def test_remove_import_records_the_functions_using_it():
    source = (
        "from __future__ import annotations\n"
        "import os.path, sys\n"
        "from json import loads as parse  # ü\n"
        "\n"
        "def read(p):\n    return parse(os.path.join(p))\n"
        "\n"
        "class A:\n    def exit(self):\n        sys.exit(0)\n"
    )
    mutations = enumerate_mutations(source, ["remove_import"])
    assert [(m.function, m.start_line, m.end_line, m.uses) for m in mutations] == [
        ("<module>", 2, 2, ("read", "A.exit")), ("<module>", 3, 3, ("read",)),
    ]
    assert mutations[1].source == source.replace("from json import loads as parse  # ü\n", "")


def test_remove_return_and_loop_put_pass_in_an_emptied_block():
    source = "def f(xs):\n    for x in xs:\n        return x\n    while xs:\n        xs.pop()\n    return None\n"
    assert mutated(source, "remove_return") == [
        "def f(xs):\n    for x in xs:\n        pass\n    while xs:\n        xs.pop()\n    return None\n",
    ]
    assert mutated(source, "remove_loop") == [
        "def f(xs):\n    while xs:\n        xs.pop()\n    return None\n",
        "def f(xs):\n    for x in xs:\n        return x\n    return None\n",
    ]


def test_remove_statement():
    source = 'def f(x):\n    """Doc."""\n    a = 1; b = 2\n    if x:\n        a = (3 +\n             4)\n    def g(): pass\n    pass\n'
    assert mutated(source, "remove_statement") == [
        'def f(x):\n    """Doc."""\n    a = 1; b = 2\n    def g(): pass\n    pass\n',
        'def f(x):\n    """Doc."""\n    a = 1; b = 2\n    if x:\n        pass\n    def g(): pass\n    pass\n',
    ]


def test_remove_conditional_dedents_the_body():
    source = (
        "def f(x):\n"
        "    if x:  # guard\n"
        "        s = '''\n  text\n        more'''\n"
        "\n"
        "        for c in s:\n"
        "            print(c)\n"
        "    return 1\n"
    )
    assert mutated(source, "remove_conditional") == [
        "def f(x):\n    s = '''\n  text\n        more'''\n\n    for c in s:\n        print(c)\n    return 1\n",
    ]
    with_else = "def f(x):\n    if x:\n        return 1\n    else:\n        return 2\n"
    odd_continuation = "def f(x):\n    if x:\n        y = g(1,\n  2)\n    return 1\n"
    assert mutated(with_else, "remove_conditional") == mutated(odd_continuation, "remove_conditional") == []


def test_remove_body_keeps_the_docstring():
    source = 'def f(x):\n    """Doc é."""\n    y = x\n    return y  # done\n\ndef g():\n    ...\n'
    assert mutated(source, "remove_body") == ['def f(x):\n    """Doc é."""\n    pass\n\ndef g():\n    ...\n']


@pytest.fixture(scope="module")
def sample_mutations() -> list[tuple[str, list[Mutation]]]:
    return [(path.read_text(), enumerate_mutations(path.read_text())) for path in SAMPLE_FILES]


def test_only_the_recorded_span_changes_on_the_sample_repo(sample_mutations):
    operators_seen = set()
    for original, mutations in sample_mutations:
        old = original.splitlines(keepends=True)
        for mutation in mutations:
            operators_seen.add(mutation.operator)
            ast.parse(mutation.source)
            new = mutation.source.splitlines(keepends=True)
            start, end = mutation.start_line, mutation.end_line
            assert 1 <= start <= end <= len(old)
            # Where a deleted block starts with the line that follows it (a closing `)`), difflib may show
            # it one line earlier: so difflib bounds how many lines changed, slicing pins where.
            opcodes = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
            assert sum(i2 - i1 for tag, i1, i2, _, _ in opcodes if tag != "equal") <= end - start + 1
            assert new[: start - 1] == old[: start - 1]
            assert new[len(new) - (len(old) - end):] == old[end:]
    assert operators_seen == set(OPERATORS)


def test_deterministic_and_deduplicated(sample_mutations):
    for original, mutations in sample_mutations:
        sources = [mutation.source for mutation in mutations]
        assert len(set(sources)) == len(sources)
        assert original not in sources
    original, mutations = sample_mutations[2]
    assert enumerate_mutations(original) == mutations


def test_filters():
    source = "import os\n\ndef f(a, b):\n    return a < b\n\ndef g(a):\n    return os.sep + a\n"
    only_g = enumerate_mutations(source, functions=["g"])
    assert {m.function for m in only_g} == {"g", "<module>"}
    assert all("g" in m.uses for m in only_g)
    assert {m.operator for m in enumerate_mutations(source, operators={"replace_compare"})} == {"replace_compare"}
    assert enumerate_mutations(source, operators=[]) == []


def test_bad_input():
    with pytest.raises(ValueError, match="remove_body") as error:
        enumerate_mutations("x = 1\n", operators=["flip_everything"])
    assert "flip_everything" in str(error.value)
    with pytest.raises(SyntaxError):
        enumerate_mutations("def f(:\n")


TRICKY = '''\
"""Shapes the windowed check must get right: elif, decorators, shared lines, one-liners, tabs, CRLF-free text."""
import os, sys
from json import loads  # é


@staticmethod
def deco(f):
    return f


class A:
    LIMIT = 3

    @deco
    def m(self, a, b=1, *, c=2):
        if a < b:
            return a + 1
        elif a > b or c:
            x = a; y = b < 2
            return x - y
        else:
            while a:
                a -= 1
        if b: return not c
        for i in range(3):
            if i == 1:
                break
        try:
            z = loads(a)
        except ValueError:
            z = -1
        finally:
            b = ~b
        return z


def n(limit):
\tif limit > 2:
\t\treturn os.sep * 2
\treturn sys.argv[1]


def outer(p, q):
    def inner(r):
        return r ** 2
    s = """a multi-line
    string""" if p else q
    return inner(p) // q, divmod(p, q), s
'''


def _reference(text: str, edits) -> tuple[int, int, str, bool] | None:
    """What a mutation does, found the slow way: the whole file edited, split, diffed and parsed."""
    from forager.tasks.source_edit import LINE, apply_edits

    mutated = apply_edits(text, edits)
    if mutated == text:
        return None
    old, new = LINE.findall(text), LINE.findall(mutated)
    limit = min(len(old), len(new))
    head = next((i for i in range(limit) if old[i] != new[i]), limit)
    tail = next((i for i in range(limit - head) if old[-1 - i] != new[-1 - i]), limit - head)
    try:
        changed = ast.dump(ast.parse(mutated)) != ast.dump(ast.parse(text))
    except SyntaxError:
        changed = False
    return head + 1, max(head + 1, len(old) - tail), mutated, changed


@pytest.mark.parametrize("name", ["tricky", "bump.py", "cli.py", "collection.py"])
def test_the_windowed_check_agrees_with_whole_file_parsing(name):
    """Enumeration looks at the changed statement only (linear in the module's size); the verdicts and
    changed lines are those of parsing and diffing the whole mutated file."""
    from forager.tasks.mutate import _REGISTRY
    from forager.tasks.source_edit import Source
    from forager.tasks.source_window import changes_tree, edit_window

    text = TRICKY if name == "tricky" else next(p for p in SAMPLE_FILES if p.name == name).read_text()
    src = Source(text)
    checked = 0
    for operator in OPERATORS:
        for candidate in _REGISTRY[operator](src):
            expected = _reference(text, candidate.edits)
            window = edit_window(src, candidate.edits)
            if expected is None:
                assert window is None
                continue
            start, end, mutated, changed = expected
            assert (window.start_line, window.end_line) == (start, end), (operator, candidate.description)
            head, stop = src.starts[window.head], src.starts[window.stop]
            assert text[:head] + "".join(window.lines) + text[stop:] == mutated
            assert changes_tree(src, window) == changed, (operator, candidate.description, mutated)
            checked += 1
    assert checked >= (40 if name == "tricky" else 1)


def test_mutations_share_the_original_and_keep_only_their_span():
    mutations = enumerate_mutations(TRICKY)
    assert len({m.operator for m in mutations}) == len(OPERATORS)
    for mutation in mutations:
        assert mutation.original is mutations[0].original  # one string per file, not a copy per mutation
        start, end, text = mutation.span
        assert mutation.source == TRICKY[:start] + text + TRICKY[end:]
        new_lines = mutation.source.splitlines()
        assert all(new_lines[n - 1] == line for n, line in mutation.mutated_lines.items())

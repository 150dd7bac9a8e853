"""Plant realistic bugs in Python source for mutate-fix tasks (as in Meta's CWM paper).

A mutation edits the source text only where the AST nodes it changes lie, so the rest of the file keeps
its formatting byte for byte and the reverse diff (the reference fix) stays small. Nothing is ever
`ast.unparse`d.
"""

from __future__ import annotations

import ast
import bisect
import io
import itertools
import re
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

#: Operator names in the order `enumerate_mutations` tries them. Fine-grained operators come first so
#: that, when two produce the same file, the more specific description is the one kept.
OPERATORS: tuple[str, ...] = (
    "replace_compare", "replace_binop", "replace_boolop", "replace_unaryop", "change_constant",
    "invert_if", "shuffle_call_args", "swap_variables", "remove_parameter", "remove_return",
    "remove_loop", "remove_conditional", "remove_statement", "remove_import", "remove_body",
)

_Edit = tuple[int, int, str]  # (start, end, replacement), offsets into the source string
_Change = tuple[list[_Edit], str]  # the edits of one mutation and its description
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_ANNOTATION_FIELDS = frozenset({"annotation", "returns"})
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_BINOPS: dict[type[ast.operator], tuple[str, str]] = {
    ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
    ast.FloorDiv: ("//", "/"), ast.Mod: ("%", "//"), ast.Pow: ("**", "*"), ast.LShift: ("<<", ">>"),
    ast.RShift: (">>", "<<"), ast.BitAnd: ("&", "|"), ast.BitOr: ("|", "&"), ast.BitXor: ("^", "&"),
}
_COMPARES: dict[type[ast.cmpop], tuple[str, str]] = {
    ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
    ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is"),
    ast.In: ("in", "not in"), ast.NotIn: ("not in", "in"),
}
_UNARY_TOKENS: dict[type[ast.unaryop], str] = {ast.Not: "not", ast.USub: "-", ast.Invert: "~"}
# A condition of these kinds needs parentheses after `not`.
_LOOSE_EXPRS = (ast.BoolOp, ast.IfExp, ast.NamedExpr, ast.Lambda, ast.Yield, ast.YieldFrom)


@dataclass(frozen=True)
class FunctionInfo:
    """Where one `def` or `async def` lies in a file."""

    qualname: str
    """Dotted path through enclosing classes and functions: "Class.method", "outer.inner"."""
    lineno: int
    """Line of the `def` keyword (decorators excluded)."""
    end_lineno: int
    body_lineno: int
    """First line of the body after any docstring (the docstring's line when nothing follows it)."""


@dataclass(frozen=True)
class Mutation:
    """One planted bug: the whole mutated file and where, in the original, it differs."""

    operator: str
    function: str
    """Qualname of the function it is in; "<module>" for remove_import."""
    start_line: int
    """First and last line (1-based, of the original source) of the changed span."""
    end_line: int
    description: str
    """Short human text, kept in metadata and never shown to the agent."""
    source: str
    uses: tuple[str, ...] = ()
    """Functions whose tests may catch the bug: `(function,)`, or for remove_import the users of its names."""


@dataclass(frozen=True)
class _Token:
    string: str
    start: int
    end: int


@dataclass(frozen=True)
class _Candidate:
    function: str
    edits: tuple[_Edit, ...]
    description: str
    uses: tuple[str, ...]


@dataclass
class _Function:
    info: FunctionInfo
    node: ast.FunctionDef | ast.AsyncFunctionDef
    is_method: bool

    @cached_property
    def own(self) -> list[ast.AST]:
        """Nodes of the signature and body, not of nested scopes, annotations or f-strings."""
        out: list[ast.AST] = []

        def visit(node: ast.AST) -> None:
            out.append(node)
            if isinstance(node, (*_SCOPES, ast.JoinedStr)):
                return
            for name, value in ast.iter_fields(node):
                if name not in _ANNOTATION_FIELDS:
                    for child in value if isinstance(value, list) else [value]:
                        if isinstance(child, ast.AST):
                            visit(child)

        for top in [self.node.args, *self.node.body]:
            visit(top)
        return out

    @cached_property
    def statements(self) -> list[tuple[ast.stmt, list[ast.stmt]]]:
        """Every statement of the function (nested scopes not entered), with the block holding it."""
        return [(stmt, block) for block in _blocks(self.node.body) for stmt in block]


def _docstring(node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.stmt | None:
    first = node.body[0]
    is_string = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    return first if is_string and isinstance(first.value.value, str) else None


def _blocks(block: list[ast.stmt]) -> Iterator[list[ast.stmt]]:
    yield block
    for stmt in block:
        if isinstance(stmt, _SCOPES):
            continue
        for name in ("body", "orelse", "finalbody"):
            sub = getattr(stmt, name, None)
            if isinstance(sub, list) and sub:
                yield from _blocks(sub)
        for clause in [*getattr(stmt, "handlers", []), *getattr(stmt, "cases", [])]:
            yield from _blocks(clause.body)


class _Source:
    """The original file: its tree, tokens, and conversions from AST positions to string offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.tree = ast.parse(text)
        self.lines: list[str] = _LINE.findall(text)
        self.starts = list(itertools.accumulate(map(len, self.lines), initial=0))

    def offset(self, lineno: int, col: int) -> int:
        """String offset of an AST position, whose column counts UTF-8 bytes."""
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + (col if line.isascii() else len(line.encode()[:col].decode()))

    def start(self, node: ast.AST) -> int:
        return self.offset(node.lineno, node.col_offset)

    def end(self, node: ast.AST) -> int:
        return self.offset(node.end_lineno, node.end_col_offset)

    def segment(self, node: ast.AST) -> str:
        return self.text[self.start(node):self.end(node)]

    def stmt_start(self, stmt: ast.stmt) -> int:
        """Start of a statement, counting a decorated definition from its first `@`."""
        decorators = getattr(stmt, "decorator_list", None)
        return self.text.rfind("@", 0, self.start(decorators[0])) if decorators else self.start(stmt)

    def line_index(self, offset: int) -> int:
        return min(bisect.bisect_right(self.starts, offset) - 1, len(self.lines) - 1)

    def line_start(self, offset: int) -> int:
        return self.starts[self.line_index(offset)]

    def starts_line(self, offset: int) -> bool:
        return not self.text[self.line_start(offset):offset].strip()

    def clean_line_end(self, offset: int) -> int | None:
        """End of the line's content if only blanks or a comment follow `offset` on it, else None."""
        index = self.line_index(offset)
        line_end = self.starts[index] + len(self.lines[index].rstrip("\r\n"))
        rest = self.text[offset:line_end].strip()
        return line_end if not rest or rest.startswith("#") else None

    def is_elif(self, stmt: ast.stmt) -> bool:
        return isinstance(stmt, ast.If) and self.text.startswith("elif", self.start(stmt))

    @cached_property
    def _lexed(self) -> tuple[list[_Token], set[int]]:
        """Significant tokens, and the lines that begin inside a multi-line string."""
        skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                   tokenize.ENDMARKER}
        tokens: list[_Token] = []
        string_lines: set[int] = set()
        try:
            for tok in tokenize.generate_tokens(io.StringIO(self.text).readline):
                if tok.type == tokenize.STRING:
                    string_lines.update(range(tok.start[0] + 1, tok.end[0] + 1))
                if tok.type not in skipped:
                    start, end = (self.starts[row - 1] + col for row, col in (tok.start, tok.end))
                    tokens.append(_Token(tok.string, start, end))
        except (tokenize.TokenError, SyntaxError):  # then token-based operators find nothing
            return [], set()
        return tokens, string_lines

    @cached_property
    def _token_starts(self) -> list[int]:
        return [token.start for token in self._lexed[0]]

    def between(self, start: int, end: int) -> list[_Token]:
        """Tokens lying within [start, end], parentheses left out."""
        tokens = self._lexed[0]
        found = []
        for token in tokens[bisect.bisect_left(self._token_starts, start):]:
            if token.end > end:
                break
            if token.string not in ("(", ")"):
                found.append(token)
        return found

    def next_token(self, offset: int) -> _Token:
        index = bisect.bisect_left(self._token_starts, offset)
        tokens = self._lexed[0]
        return tokens[index] if index < len(tokens) else _Token("", len(self.text), len(self.text))

    def prev_token(self, offset: int) -> _Token:
        index = bisect.bisect_left(self._token_starts, offset) - 1
        return self._lexed[0][index] if index >= 0 else _Token("", 0, 0)

    @cached_property
    def parents(self) -> dict[ast.AST, ast.AST]:
        return {child: node for node in ast.walk(self.tree) for child in ast.iter_child_nodes(node)}

    @cached_property
    def functions(self) -> list[_Function]:
        found: list[_Function] = []

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, _SCOPES):
                    visit(child, prefix)
                    continue
                qualname = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    found.append(_Function(self._info(child, qualname), child, isinstance(node, ast.ClassDef)))
                visit(child, qualname + ".")

        visit(self.tree, "")
        return sorted(found, key=lambda f: (f.node.lineno, f.node.col_offset))

    def _info(self, node: ast.FunctionDef | ast.AsyncFunctionDef, qualname: str) -> FunctionInfo:
        body = node.body
        first = body[1] if _docstring(node) is not None and len(body) > 1 else body[0]
        body_lineno = self.line_index(self.stmt_start(first)) + 1
        return FunctionInfo(qualname, node.lineno, node.end_lineno or node.lineno, body_lineno)


def find_functions(source: str) -> list[FunctionInfo]:
    """Every `def` and `async def` of `source`, methods and nested ones included, in source order."""
    return [function.info for function in _Source(source).functions]


def _snippet(text: str, limit: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _delete_statement(src: _Source, stmt: ast.stmt, block: list[ast.stmt]) -> _Edit | None:
    """Delete the whole lines of `stmt`, or put `pass` in its place when it is alone in its block."""
    start = src.stmt_start(stmt)
    content_end = src.clean_line_end(src.end(stmt))
    if not src.starts_line(start) or content_end is None:  # shares a line with other code
        return None
    if len(block) == 1:
        return (start, content_end, "pass")
    return (src.line_start(start), src.starts[src.line_index(content_end) + 1], "")


_REGISTRY: dict[str, Callable[[_Source], Iterator[_Candidate]]] = {}


def _per_function(name: str) -> Callable[[Callable[[_Source, _Function], Iterator[_Change]]], None]:
    """Register an operator that is applied to each function in turn."""

    def register(operator: Callable[[_Source, _Function], Iterator[_Change]]) -> None:
        def run(src: _Source) -> Iterator[_Candidate]:
            for function in src.functions:
                qualname = function.info.qualname
                for edits, description in operator(src, function):
                    yield _Candidate(qualname, tuple(edits), description, (qualname,))

        _REGISTRY[name] = run

    return register


@_per_function("replace_compare")
def _replace_compare(src: _Source, fn: _Function) -> Iterator[_Change]:
    for node in fn.own:
        if isinstance(node, ast.Compare):
            old, new = _COMPARES[type(node.ops[0])]
            tokens = src.between(src.end(node.left), src.start(node.comparators[0]))
            if tokens and " ".join(token.string for token in tokens) == old:
                yield [(tokens[0].start, tokens[-1].end, new)], f"replace `{old}` with `{new}`"


@_per_function("replace_binop")
def _replace_binop(src: _Source, fn: _Function) -> Iterator[_Change]:
    for node in fn.own:
        if isinstance(node, ast.BinOp):
            left, right, suffix = node.left, node.right, ""
        elif isinstance(node, ast.AugAssign):
            left, right, suffix = node.target, node.value, "="
        else:
            continue
        if type(node.op) not in _BINOPS:
            continue
        if isinstance(node.op, ast.Mod) and isinstance(left, (ast.Constant, ast.JoinedStr)):
            continue  # `"%s" % x` is formatting, not arithmetic
        old, new = (operator + suffix for operator in _BINOPS[type(node.op)])
        tokens = src.between(src.end(left), src.start(right))
        if len(tokens) == 1 and tokens[0].string == old:
            yield [(tokens[0].start, tokens[0].end, new)], f"replace `{old}` with `{new}`"


@_per_function("replace_boolop")
def _replace_boolop(src: _Source, fn: _Function) -> Iterator[_Change]:
    for node in fn.own:
        if isinstance(node, ast.BoolOp):
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            tokens = src.between(src.end(node.values[0]), src.start(node.values[1]))
            if len(tokens) == 1 and tokens[0].string == old:
                yield [(tokens[0].start, tokens[0].end, new)], f"replace `{old}` with `{new}`"


@_per_function("replace_unaryop")
def _replace_unaryop(src: _Source, fn: _Function) -> Iterator[_Change]:
    for node in fn.own:
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_TOKENS:
            token = src.next_token(src.start(node))
            if token.string == _UNARY_TOKENS[type(node.op)]:
                yield [(token.start, src.next_token(token.end).start, "")], f"remove `{token.string}`"


def _changed_constant(value: object) -> str | None:
    """The literal a constant is changed to: n + 1 (but 1 -> 0), the other bool, x + 1.0 if it prints plainly."""
    if isinstance(value, bool):
        return repr(not value)
    if isinstance(value, int):
        return "0" if value == 1 else str(value + 1)
    if isinstance(value, float) and re.fullmatch(r"[0-9]+\.[0-9]+", text := repr(value + 1.0)):
        return text
    return None


@_per_function("change_constant")
def _change_constant(src: _Source, fn: _Function) -> Iterator[_Change]:
    for node in fn.own:
        if not isinstance(node, ast.Constant) or isinstance(src.parents.get(node), ast.UnaryOp):
            continue  # `-1` is left alone: `-0` or `-2` reads oddly next to the operator mutations
        if (new := _changed_constant(node.value)) is None:
            continue
        old = src.segment(node)
        yield [(src.start(node), src.end(node), new)], f"replace `{old}` with `{new}`"


@_per_function("invert_if")
def _invert_if(src: _Source, fn: _Function) -> Iterator[_Change]:
    for stmt, _ in fn.statements:
        if isinstance(stmt, ast.If) and not (isinstance(stmt.test, ast.UnaryOp) and isinstance(stmt.test.op, ast.Not)):
            text = src.segment(stmt.test)
            negated = f"not ({text})" if isinstance(stmt.test, _LOOSE_EXPRS) else f"not {text}"
            yield [(src.start(stmt.test), src.end(stmt.test), negated)], f"negate the condition `{_snippet(text)}`"


@_per_function("shuffle_call_args")
def _shuffle_call_args(src: _Source, fn: _Function) -> Iterator[_Change]:
    for node in fn.own:
        if not isinstance(node, ast.Call) or len(node.args) < 2 or any(isinstance(a, ast.Starred) for a in node.args):
            continue
        texts = [src.segment(arg) for arg in node.args]
        pairs = (pair for pair in itertools.combinations(range(len(texts)), 2) if texts[pair[0]] != texts[pair[1]])
        if (pair := next(pairs, None)) is not None:
            first, second = (node.args[i] for i in pair)
            edits = [(src.start(first), src.end(first), texts[pair[1]]),
                     (src.start(second), src.end(second), texts[pair[0]])]
            yield edits, f"swap arguments `{_snippet(texts[pair[0]])}` and `{_snippet(texts[pair[1]])}`"


@_per_function("swap_variables")
def _swap_variables(src: _Source, fn: _Function) -> Iterator[_Change]:
    args = fn.node.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    declared = {name for node in fn.own if isinstance(node, (ast.Global, ast.Nonlocal)) for name in node.names}
    bound = [(src.start(p), p.arg) for p in params if p is not None and p.arg not in ("self", "cls")]
    bound += [(src.start(n), n.id) for n in fn.own if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    names = [name for name in dict.fromkeys(name for _, name in sorted(bound)) if name not in declared]
    for first, second in itertools.islice(itertools.combinations(names, 2), 3):
        swapped = {first: second, second: first}
        # Only where they are read: swapping the bindings too would just rename them (no bug at all).
        edits = [(src.start(node), src.end(node), swapped[node.id]) for node in fn.own
                 if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in swapped]
        if edits:
            yield edits, f"swap the uses of `{first}` and `{second}`"


@_per_function("remove_parameter")
def _remove_parameter(src: _Source, fn: _Function) -> Iterator[_Change]:
    args = fn.node.args
    positional = [*args.posonlyargs, *args.args]
    defaults = dict(zip(reversed(positional), reversed(args.defaults)))
    defaults.update((p, d) for p, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None)
    for param in [*positional, *args.kwonlyargs]:
        if fn.is_method and positional and param is positional[0] and param.arg in ("self", "cls"):
            continue
        start, end = src.start(param), src.end(defaults.get(param, param))
        if args.kwonlyargs == [param] and args.vararg is None:  # a bare `*` must go with its last name
            start = src.prev_token(src.prev_token(start).start).start
        after = src.next_token(end)
        following = src.next_token(after.end) if after.string == "," else after
        before = src.prev_token(start)
        line_end = src.clean_line_end(after.end if after.string == "," else end)
        next_on_same_line = src.line_index(following.start) == src.line_index(end)
        if src.starts_line(start) and line_end is not None:  # one parameter per line: delete its lines
            edit = (src.line_start(start), src.starts[src.line_index(line_end) + 1], "")
        elif after.string == "," and following.string != ")" and (before.string != "," or next_on_same_line):
            edit = (start, following.start, "")  # the parameter, its comma and the blanks up to the next one
        elif before.string == ",":
            edit = (before.start, end, "")  # the comma before the parameter, and the parameter
        else:
            edit = (before.end, following.start, "")  # the only parameter: empty the parentheses
        yield [edit], f"remove parameter `{param.arg}`"


@_per_function("remove_return")
def _remove_return(src: _Source, fn: _Function) -> Iterator[_Change]:
    for stmt, block in fn.statements:
        value = getattr(stmt, "value", None)
        returns_value = value is not None and not (isinstance(value, ast.Constant) and value.value is None)
        if isinstance(stmt, ast.Return) and returns_value:
            if (edit := _delete_statement(src, stmt, block)) is not None:
                yield [edit], f"remove `{_snippet(src.segment(stmt))}`"


@_per_function("remove_loop")
def _remove_loop(src: _Source, fn: _Function) -> Iterator[_Change]:
    for stmt, block in fn.statements:
        if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            if (edit := _delete_statement(src, stmt, block)) is not None:
                yield [edit], f"remove the loop `{_snippet(src.segment(stmt))}`"


@_per_function("remove_conditional")
def _remove_conditional(src: _Source, fn: _Function) -> Iterator[_Change]:
    string_lines = src._lexed[1]
    for stmt, _ in fn.statements:
        if not isinstance(stmt, ast.If) or stmt.orelse or src.is_elif(stmt):
            continue
        start, body_start = src.start(stmt), src.stmt_start(stmt.body[0])
        if not (src.starts_line(start) and src.starts_line(body_start)):
            continue
        if_indent = src.text[src.line_start(start):start]
        body_indent = src.text[src.line_start(body_start):body_start]
        if len(body_indent) <= len(if_indent) or not body_indent.startswith(if_indent):
            continue
        edits = [(src.line_start(start), src.line_start(body_start), "")]  # the `if ...:` line(s)
        for lineno in range(src.line_index(body_start) + 1, stmt.end_lineno + 1):
            line = src.lines[lineno - 1]
            if lineno in string_lines or not line.strip():
                continue  # inside a multi-line string, or blank: left as it is
            if not line.startswith(body_indent):
                break
            line_start = src.starts[lineno - 1]
            edits.append((line_start + len(if_indent), line_start + len(body_indent), ""))
        else:
            yield edits, f"drop the guard `if {_snippet(src.segment(stmt.test))}:`"


@_per_function("remove_statement")
def _remove_statement(src: _Source, fn: _Function) -> Iterator[_Change]:
    for stmt, block in fn.statements:
        if stmt is _docstring(fn.node) or isinstance(stmt, (*_SCOPES, ast.Pass)) or src.is_elif(stmt):
            continue
        if (edit := _delete_statement(src, stmt, block)) is not None:
            yield [edit], f"remove `{_snippet(src.segment(stmt))}`"


def _remove_import(src: _Source) -> Iterator[_Candidate]:
    """Delete one top-level import; its `uses` are the functions that reference a name it binds."""
    body = src.tree.body
    for stmt in body:
        if not isinstance(stmt, (ast.Import, ast.ImportFrom)) or any(alias.name == "*" for alias in stmt.names):
            continue
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
            continue
        if (edit := _delete_statement(src, stmt, body)) is None:
            continue
        bound = {alias.asname or alias.name.split(".")[0] for alias in stmt.names}
        uses = tuple(dict.fromkeys(
            fn.info.qualname for fn in src.functions
            if any(isinstance(node, ast.Name) and node.id in bound for node in fn.own)
        ))
        yield _Candidate("<module>", (edit,), f"remove `{_snippet(src.segment(stmt))}`", uses)


_REGISTRY["remove_import"] = _remove_import


@_per_function("remove_body")
def _remove_body(src: _Source, fn: _Function) -> Iterator[_Change]:
    rest = fn.node.body[1:] if _docstring(fn.node) else fn.node.body
    placeholder = len(rest) == 1 and (isinstance(rest[0], ast.Pass) or (
        isinstance(rest[0], ast.Expr) and isinstance(rest[0].value, ast.Constant) and rest[0].value.value is ...))
    if not rest or placeholder:
        return
    start, end = src.stmt_start(rest[0]), src.end(rest[-1])
    if src.starts_line(start) and (line_end := src.clean_line_end(end)) is not None:
        end = line_end  # a trailing comment goes with the code it described
    yield [(start, end, "pass")], "replace the body with `pass`"


def _apply(source: str, edits: Iterable[_Edit]) -> str:
    for start, end, replacement in sorted(edits, reverse=True):  # right to left keeps offsets valid
        source = source[:start] + replacement + source[end:]
    return source


def _changed_lines(old: list[str], new: list[str]) -> tuple[int, int]:
    """First and last line of `old` outside the common head and tail of the two files."""
    limit = min(len(old), len(new))
    head = next((i for i in range(limit) if old[i] != new[i]), limit)
    tail = next((i for i in range(limit - head) if old[-1 - i] != new[-1 - i]), limit - head)
    return head + 1, max(head + 1, len(old) - tail)


def _changes_tree(src: _Source, new_lines: list[str], start: int, end: int) -> bool:
    """Whether a mutated file, equal to the original outside lines [start, end], parses to another tree.

    Top-level statements start at column 0 and the text around the touched ones is unchanged, so
    parsing and comparing only those validates the whole file at a fraction of the cost.
    """
    touched, first, last = [], start, end
    for stmt in src.tree.body:
        stmt_first, stmt_last = src.line_index(src.stmt_start(stmt)) + 1, stmt.end_lineno or stmt.lineno
        if stmt_first <= end and stmt_last >= start:
            touched.append(stmt)
            first, last = min(first, stmt_first), max(last, stmt_last)
    chunk = "".join(new_lines[first - 1:last + len(new_lines) - len(src.lines)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = ast.parse(chunk).body
    except (SyntaxError, ValueError):
        return False
    return len(new) != len(touched) or any(ast.dump(a) != ast.dump(b) for a, b in zip(touched, new))


def _selected(operators: Iterable[str] | None) -> list[str]:
    if operators is None:
        return list(OPERATORS)
    wanted = set(operators)
    if unknown := sorted(wanted - set(OPERATORS)):
        raise ValueError(f"unknown mutation operator(s) {', '.join(unknown)}; valid ones: {', '.join(OPERATORS)}")
    return [name for name in OPERATORS if name in wanted]


def enumerate_mutations(
    source: str, operators: Iterable[str] | None = None, functions: Iterable[str] | None = None
) -> list[Mutation]:
    """Every mutation of `source` by the selected operators, in OPERATORS order then source order.

    With `functions`, only mutations whose `uses` meet those qualnames are kept. Each result parses,
    differs from the original in its AST, and no two results have the same source. Raises SyntaxError
    when `source` does not parse and ValueError for an unknown operator name.
    """
    names = _selected(operators)
    src = _Source(source)
    wanted = None if functions is None else set(functions)
    seen = {source}
    mutations: list[Mutation] = []
    for name in names:
        candidates = sorted(_REGISTRY[name](src), key=lambda c: min(edit[0] for edit in c.edits))
        for candidate in candidates:
            if wanted is not None and wanted.isdisjoint(candidate.uses):
                continue
            mutated = _apply(source, candidate.edits)
            if mutated in seen:
                continue
            seen.add(mutated)
            new_lines = _LINE.findall(mutated)
            start, end = _changed_lines(src.lines, new_lines)
            if not _changes_tree(src, new_lines, start, end):
                continue
            mutations.append(Mutation(name, candidate.function, start, end, candidate.description, mutated,
                                      candidate.uses))
    return mutations

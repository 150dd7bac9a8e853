"""Python source as the mutation operators see it: its AST, tokens and lines, and text edits on it.

A mutation edits the source text only where the AST nodes it changes lie, so the rest of the file keeps
its formatting byte for byte and the reverse diff (the reference fix) stays small. This module finds
where those nodes lie (functions, statements, tokens) and applies edits; `forager.tasks.source_window`
finds what an edit changed and checks that the edited file still parses to a different tree. The
operators themselves are in `forager.tasks.mutate`.
"""

from __future__ import annotations

import ast
import bisect
import io
import itertools
import re
import tokenize
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

Edit = tuple[int, int, str]  # (start, end, replacement), offsets into the source string
Change = tuple[list[Edit], str]  # the edits of one mutation and its description
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
ANNOTATION_FIELDS = frozenset({"annotation", "returns"})
LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


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
    """One planted bug: where, in the original, it differs and what replaces those lines.

    It keeps the original file (one shared string per file) and the replaced span rather than a copy
    of the mutated file: a 4,000-line module has thousands of candidates.
    """

    operator: str
    function: str
    """Qualname of the function it is in; "<module>" for remove_import."""
    start_line: int
    """First and last line (1-based, of the original source) of the changed span."""
    end_line: int
    description: str
    """Short human text, kept in metadata and never shown to the agent."""
    original: str = field(repr=False)
    span: tuple[int, int, str] = field(repr=False)
    """Offsets [start, end) of whole lines of `original`, and the lines that replace them."""
    uses: tuple[str, ...] = ()
    """Functions whose tests may catch the bug: `(function,)`, or for remove_import the users of its names."""

    @property
    def source(self) -> str:
        """The whole mutated file."""
        start, end, text = self.span
        return self.original[:start] + text + self.original[end:]

    @property
    def mutated_lines(self) -> dict[int, str]:
        """The lines the mutation wrote, by their (1-based) number in the mutated file."""
        first = self.original.count("\n", 0, self.span[0]) + 1 if "\r" not in self.original else \
            len(LINE.findall(self.original[:self.span[0]])) + 1
        return {first + i: line.rstrip("\r\n") for i, line in enumerate(LINE.findall(self.span[2]))}


@dataclass(frozen=True)
class Token:
    string: str
    start: int
    end: int


@dataclass(frozen=True)
class Candidate:
    function: str
    edits: tuple[Edit, ...]
    description: str
    uses: tuple[str, ...]


@dataclass
class Function:
    info: FunctionInfo
    node: ast.FunctionDef | ast.AsyncFunctionDef
    is_method: bool

    @cached_property
    def own(self) -> list[ast.AST]:
        """Nodes of the signature and body, not of nested scopes, annotations or f-strings."""
        out: list[ast.AST] = []

        def visit(node: ast.AST) -> None:
            out.append(node)
            if isinstance(node, (*SCOPES, ast.JoinedStr)):
                return
            for name, value in ast.iter_fields(node):
                if name not in ANNOTATION_FIELDS:
                    for child in value if isinstance(value, list) else [value]:
                        if isinstance(child, ast.AST):
                            visit(child)

        for top in [self.node.args, *self.node.body]:
            visit(top)
        return out

    @cached_property
    def statements(self) -> list[tuple[ast.stmt, list[ast.stmt]]]:
        """Every statement of the function (nested scopes not entered), with the block holding it."""
        return [(stmt, block) for block in blocks(self.node.body) for stmt in block]


def docstring(node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.stmt | None:
    first = node.body[0]
    is_string = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    return first if is_string and isinstance(first.value.value, str) else None


def blocks(block: list[ast.stmt]) -> Iterator[list[ast.stmt]]:
    """`block` and every block nested in it, nested scopes left out."""
    yield block
    for stmt in block:
        if not isinstance(stmt, SCOPES):
            for sub in sub_blocks(stmt):
                yield from blocks(sub)


def sub_blocks(stmt: ast.stmt) -> Iterator[list[ast.stmt]]:
    """The blocks directly inside a statement: bodies, else and finally blocks, handlers, cases."""
    for name in ("body", "orelse", "finalbody"):
        sub = getattr(stmt, name, None)
        if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt):
            yield sub
    for clause in [*getattr(stmt, "handlers", []), *getattr(stmt, "cases", [])]:
        yield clause.body


class Source:
    """The original file: its tree, tokens, and conversions from AST positions to string offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.tree = ast.parse(text)
        self.lines: list[str] = LINE.findall(text)
        self.starts = list(itertools.accumulate(map(len, self.lines), initial=0))
        self._block_firsts: dict[int, list[int]] = {}
        self._dumps: dict[int, str] = {}

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

    def owns_lines(self, stmt: ast.stmt) -> bool:
        """Whether no other code shares a line with `stmt` (only blanks and comments around it)."""
        return self.starts_line(self.stmt_start(stmt)) and self.clean_line_end(self.end(stmt)) is not None

    def statement_at(self, block: list[ast.stmt], lineno: int) -> ast.stmt | None:
        """The statement of `block` whose lines (decorators included) hold line `lineno`."""
        firsts = self._block_firsts.get(id(block))
        if firsts is None:
            firsts = self._block_firsts[id(block)] = [self.line_index(self.stmt_start(s)) + 1 for s in block]
        index = bisect.bisect_right(firsts, lineno) - 1
        if index < 0 or (block[index].end_lineno or block[index].lineno) < lineno:
            return None
        return block[index]

    def dump(self, node: ast.AST) -> str:
        """`ast.dump(node)`, computed once per node: many mutations compare against the same statement."""
        if id(node) not in self._dumps:
            self._dumps[id(node)] = ast.dump(node)
        return self._dumps[id(node)]

    def is_elif(self, stmt: ast.stmt) -> bool:
        return isinstance(stmt, ast.If) and self.text.startswith("elif", self.start(stmt))

    @cached_property
    def _lexed(self) -> tuple[list[Token], set[int]]:
        """Significant tokens, and the lines that begin inside a multi-line string."""
        skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                   tokenize.ENDMARKER}
        tokens: list[Token] = []
        string_lines: set[int] = set()
        try:
            for tok in tokenize.generate_tokens(io.StringIO(self.text).readline):
                if tok.type == tokenize.STRING:
                    string_lines.update(range(tok.start[0] + 1, tok.end[0] + 1))
                if tok.type not in skipped:
                    start, end = (self.starts[row - 1] + col for row, col in (tok.start, tok.end))
                    tokens.append(Token(tok.string, start, end))
        except (tokenize.TokenError, SyntaxError):  # then token-based operators find nothing
            return [], set()
        return tokens, string_lines

    @cached_property
    def _token_starts(self) -> list[int]:
        return [token.start for token in self._lexed[0]]

    def between(self, start: int, end: int) -> list[Token]:
        """Tokens lying within [start, end], parentheses left out."""
        tokens = self._lexed[0]
        found = []
        for token in tokens[bisect.bisect_left(self._token_starts, start):]:
            if token.end > end:
                break
            if token.string not in ("(", ")"):
                found.append(token)
        return found

    def next_token(self, offset: int) -> Token:
        index = bisect.bisect_left(self._token_starts, offset)
        tokens = self._lexed[0]
        return tokens[index] if index < len(tokens) else Token("", len(self.text), len(self.text))

    def prev_token(self, offset: int) -> Token:
        index = bisect.bisect_left(self._token_starts, offset) - 1
        return self._lexed[0][index] if index >= 0 else Token("", 0, 0)

    @cached_property
    def parents(self) -> dict[ast.AST, ast.AST]:
        return {child: node for node in ast.walk(self.tree) for child in ast.iter_child_nodes(node)}

    @cached_property
    def functions(self) -> list[Function]:
        found: list[Function] = []

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, SCOPES):
                    visit(child, prefix)
                    continue
                qualname = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    found.append(Function(self._info(child, qualname), child, isinstance(node, ast.ClassDef)))
                visit(child, qualname + ".")

        visit(self.tree, "")
        return sorted(found, key=lambda f: (f.node.lineno, f.node.col_offset))

    def _info(self, node: ast.FunctionDef | ast.AsyncFunctionDef, qualname: str) -> FunctionInfo:
        body = node.body
        first = body[1] if docstring(node) is not None and len(body) > 1 else body[0]
        body_lineno = self.line_index(self.stmt_start(first)) + 1
        return FunctionInfo(qualname, node.lineno, node.end_lineno or node.lineno, body_lineno)


def find_functions(source: str) -> list[FunctionInfo]:
    """Every `def` and `async def` of `source`, methods and nested ones included, in source order."""
    return [function.info for function in Source(source).functions]


def snippet(text: str, limit: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[: limit - 3] + "..."


def delete_statement(src: Source, stmt: ast.stmt, block: list[ast.stmt]) -> Edit | None:
    """Delete the whole lines of `stmt`, or put `pass` in its place when it is alone in its block."""
    start = src.stmt_start(stmt)
    content_end = src.clean_line_end(src.end(stmt))
    if not src.starts_line(start) or content_end is None:  # shares a line with other code
        return None
    if len(block) == 1:
        return (start, content_end, "pass")
    return (src.line_start(start), src.starts[src.line_index(content_end) + 1], "")


def apply_edits(source: str, edits: Iterable[Edit]) -> str:
    for start, end, replacement in sorted(edits, reverse=True):  # right to left keeps offsets valid
        source = source[:start] + replacement + source[end:]
    return source

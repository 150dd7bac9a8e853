"""Plant realistic bugs in Python source for mutate-fix tasks (as in Meta's CWM paper).

The operators (the CWM list: remove part or all of a body, parameters, imports or returns; shuffle
call arguments; swap variables; replace operators and constants) live here; they edit only the text
where the nodes they change lie (`forager.tasks.source_edit`), so the reference fix stays a small diff.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Callable, Iterable, Iterator

from forager.tasks.source_edit import (
    SCOPES,
    Candidate,
    Change,
    Function,
    FunctionInfo,
    Mutation,
    Source,
    delete_statement,
    docstring,
    find_functions,
    snippet,
)
from forager.tasks.source_window import changes_tree, edit_window

#: Operator names in the order `enumerate_mutations` tries them. Fine-grained operators come first so
#: that, when two produce the same file, the more specific description is the one kept.
OPERATORS: tuple[str, ...] = (
    "replace_compare", "replace_binop", "replace_boolop", "replace_unaryop", "change_constant",
    "invert_if", "shuffle_call_args", "swap_variables", "remove_parameter", "remove_return",
    "remove_loop", "remove_conditional", "remove_statement", "remove_import", "remove_body",
)

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


_REGISTRY: dict[str, Callable[[Source], Iterator[Candidate]]] = {}


def _per_function(name: str) -> Callable[[Callable[[Source, Function], Iterator[Change]]], None]:
    """Register an operator that is applied to each function in turn."""

    def register(operator: Callable[[Source, Function], Iterator[Change]]) -> None:
        def run(src: Source) -> Iterator[Candidate]:
            for function in src.functions:
                qualname = function.info.qualname
                for edits, description in operator(src, function):
                    yield Candidate(qualname, tuple(edits), description, (qualname,))

        _REGISTRY[name] = run

    return register


@_per_function("replace_compare")
def _replace_compare(src: Source, fn: Function) -> Iterator[Change]:
    for node in fn.own:
        if isinstance(node, ast.Compare):
            old, new = _COMPARES[type(node.ops[0])]
            tokens = src.between(src.end(node.left), src.start(node.comparators[0]))
            if tokens and " ".join(token.string for token in tokens) == old:
                yield [(tokens[0].start, tokens[-1].end, new)], f"replace `{old}` with `{new}`"


@_per_function("replace_binop")
def _replace_binop(src: Source, fn: Function) -> Iterator[Change]:
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
def _replace_boolop(src: Source, fn: Function) -> Iterator[Change]:
    for node in fn.own:
        if isinstance(node, ast.BoolOp):
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            tokens = src.between(src.end(node.values[0]), src.start(node.values[1]))
            if len(tokens) == 1 and tokens[0].string == old:
                yield [(tokens[0].start, tokens[0].end, new)], f"replace `{old}` with `{new}`"


@_per_function("replace_unaryop")
def _replace_unaryop(src: Source, fn: Function) -> Iterator[Change]:
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
def _change_constant(src: Source, fn: Function) -> Iterator[Change]:
    for node in fn.own:
        if not isinstance(node, ast.Constant) or isinstance(src.parents.get(node), ast.UnaryOp):
            continue  # `-1` is left alone: `-0` or `-2` reads oddly next to the operator mutations
        if (new := _changed_constant(node.value)) is None:
            continue
        old = src.segment(node)
        yield [(src.start(node), src.end(node), new)], f"replace `{old}` with `{new}`"


@_per_function("invert_if")
def _invert_if(src: Source, fn: Function) -> Iterator[Change]:
    for stmt, _ in fn.statements:
        if isinstance(stmt, ast.If) and not (isinstance(stmt.test, ast.UnaryOp) and isinstance(stmt.test.op, ast.Not)):
            text = src.segment(stmt.test)
            negated = f"not ({text})" if isinstance(stmt.test, _LOOSE_EXPRS) else f"not {text}"
            yield [(src.start(stmt.test), src.end(stmt.test), negated)], f"negate the condition `{snippet(text)}`"


@_per_function("shuffle_call_args")
def _shuffle_call_args(src: Source, fn: Function) -> Iterator[Change]:
    for node in fn.own:
        if not isinstance(node, ast.Call) or len(node.args) < 2 or any(isinstance(a, ast.Starred) for a in node.args):
            continue
        texts = [src.segment(arg) for arg in node.args]
        pairs = (pair for pair in itertools.combinations(range(len(texts)), 2) if texts[pair[0]] != texts[pair[1]])
        if (pair := next(pairs, None)) is not None:
            first, second = (node.args[i] for i in pair)
            edits = [(src.start(first), src.end(first), texts[pair[1]]),
                     (src.start(second), src.end(second), texts[pair[0]])]
            yield edits, f"swap arguments `{snippet(texts[pair[0]])}` and `{snippet(texts[pair[1]])}`"


@_per_function("swap_variables")
def _swap_variables(src: Source, fn: Function) -> Iterator[Change]:
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
def _remove_parameter(src: Source, fn: Function) -> Iterator[Change]:
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
def _remove_return(src: Source, fn: Function) -> Iterator[Change]:
    for stmt, block in fn.statements:
        value = getattr(stmt, "value", None)
        returns_value = value is not None and not (isinstance(value, ast.Constant) and value.value is None)
        if isinstance(stmt, ast.Return) and returns_value:
            if (edit := delete_statement(src, stmt, block)) is not None:
                yield [edit], f"remove `{snippet(src.segment(stmt))}`"


@_per_function("remove_loop")
def _remove_loop(src: Source, fn: Function) -> Iterator[Change]:
    for stmt, block in fn.statements:
        if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            if (edit := delete_statement(src, stmt, block)) is not None:
                yield [edit], f"remove the loop `{snippet(src.segment(stmt))}`"


@_per_function("remove_conditional")
def _remove_conditional(src: Source, fn: Function) -> Iterator[Change]:
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
            yield edits, f"drop the guard `if {snippet(src.segment(stmt.test))}:`"


@_per_function("remove_statement")
def _remove_statement(src: Source, fn: Function) -> Iterator[Change]:
    for stmt, block in fn.statements:
        if stmt is docstring(fn.node) or isinstance(stmt, (*SCOPES, ast.Pass)) or src.is_elif(stmt):
            continue
        if (edit := delete_statement(src, stmt, block)) is not None:
            yield [edit], f"remove `{snippet(src.segment(stmt))}`"


def _remove_import(src: Source) -> Iterator[Candidate]:
    """Delete one top-level import; its `uses` are the functions that reference a name it binds."""
    body = src.tree.body
    reads = [(fn.info.qualname, {node.id for node in fn.own if isinstance(node, ast.Name)}) for fn in src.functions]
    for stmt in body:
        if not isinstance(stmt, (ast.Import, ast.ImportFrom)) or any(alias.name == "*" for alias in stmt.names):
            continue
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
            continue
        if (edit := delete_statement(src, stmt, body)) is None:
            continue
        bound = {alias.asname or alias.name.split(".")[0] for alias in stmt.names}
        uses = tuple(dict.fromkeys(qualname for qualname, names in reads if not names.isdisjoint(bound)))
        yield Candidate("<module>", (edit,), f"remove `{snippet(src.segment(stmt))}`", uses)


_REGISTRY["remove_import"] = _remove_import


@_per_function("remove_body")
def _remove_body(src: Source, fn: Function) -> Iterator[Change]:
    rest = fn.node.body[1:] if docstring(fn.node) else fn.node.body
    placeholder = len(rest) == 1 and (isinstance(rest[0], ast.Pass) or (
        isinstance(rest[0], ast.Expr) and isinstance(rest[0].value, ast.Constant) and rest[0].value.value is ...))
    if not rest or placeholder:
        return
    start, end = src.stmt_start(rest[0]), src.end(rest[-1])
    if src.starts_line(start) and (line_end := src.clean_line_end(end)) is not None:
        end = line_end  # a trailing comment goes with the code it described
    yield [(start, end, "pass")], "replace the body with `pass`"


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
    src = Source(source)
    wanted = None if functions is None else set(functions)
    seen: set[tuple[int, int, tuple[str, ...]]] = set()  # windows are canonical: one per mutated file
    mutations: list[Mutation] = []
    for name in names:
        candidates = sorted(_REGISTRY[name](src), key=lambda c: min(edit[0] for edit in c.edits))
        for candidate in candidates:
            if wanted is not None and wanted.isdisjoint(candidate.uses):
                continue
            window = edit_window(src, candidate.edits)
            if window is None or (key := (window.head, window.stop, window.lines)) in seen:
                continue
            seen.add(key)
            if not changes_tree(src, window):
                continue
            span = (src.starts[window.head], src.starts[window.stop], "".join(window.lines))
            mutations.append(Mutation(name, candidate.function, window.start_line, window.end_line,
                                      candidate.description, source, span, candidate.uses))
    return mutations


__all__ = ["OPERATORS", "FunctionInfo", "Mutation", "enumerate_mutations", "find_functions"]

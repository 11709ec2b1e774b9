# Every int constant the gateway code carries must be cheap on the board (issue 19):
# (a) no int outside -2**30..2**30-1: on a 32-bit MicroPython that is a long int, and every
#     arithmetic op with it allocates on the heap;
# (b) no int outside -0x2000..0x1FFF inside a constant tuple unless the module normalises
#     the values it takes from that tuple (`v + 0`, once at init): a frozen image keeps such
#     an int as a long-int object in ROM, so ops on it allocate too.
# Scans what CPython compiles from every firmware/ and protocols/ .py after substituting
# `NAME = const(...)` names, as MicroPython's compiler does (so `(1, WMAX)` is a constant
# tuple here as it is on the board).
import ast
import pathlib
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = sorted(p for d in ("firmware", "protocols") for p in (ROOT / d).rglob("*.py"))

SMALL30 = (-(1 << 30), (1 << 30) - 1)
FROZEN_TUPLE_INT = (-0x2000, 0x1FFF)

# (a) long-int constants allowed, with the reason: compared only (a comparison with a long
# int does not allocate), never computed with, and not in the control loop
LONG_OK = {
    ("protocols/topics.py", 1 << 40): "bound for times the cloud sends (compared only)",
    ("protocols/topics.py", 1 << 62): "bound for telemetry ints (compared only)",
    ("protocols/trace.py", 1 << 53): "bound for trace times in us, host files (compared only)",
}

# (b) constant tuples with ints beyond the frozen small-int range: module-level name ->
# the function that normalises every int it takes from the tuple (the test checks that
# function holds a `+ 0`), or None with the reason its ints are only compared / not used
# in arithmetic on the board
NORMALISED = {
    ("firmware/edgefw/dispatch.py", "_SPEC"): "check_params",
    ("firmware/edgefw/link.py", "_INTS"): "validate_link_cfg",
}
COMPARED_ONLY = {}   # (file, name): reason


def _const_names(tree):
    # module-level NAME = const(expr) as MicroPython folds them (expr of earlier consts)
    env = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "const"):
            expr = ast.Expression(_Subst(env).visit(node.value.args[0]))
            env[node.targets[0].id] = eval(compile(ast.fix_missing_locations(expr), "c", "eval"))
    return env


class _Subst(ast.NodeTransformer):
    def __init__(self, env):
        self.env = env

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load) and node.id in self.env:
            return ast.copy_location(ast.Constant(self.env[node.id]), node)
        return node


def _compiled(path):
    tree = ast.parse(path.read_text(), str(path))
    tree = ast.fix_missing_locations(_Subst(_const_names(tree)).visit(tree))
    return tree, compile(tree, str(path), "exec")


def _ints(c):
    if type(c) is int:
        yield c
    elif isinstance(c, (tuple, frozenset)):
        for v in c:
            yield from _ints(v)


def _walk(co):
    # (code object, constant) for every constant, nested code objects included
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            yield from _walk(c)
        else:
            yield co, c


def _owners(tree):
    # constant tuple value -> the module-level name it is assigned to, or the function
    # whose default args it is (CPython folds defaults into one constant tuple)
    own = {}

    def collect(node, owner):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Tuple):
                try:
                    own.setdefault(ast.literal_eval(sub), owner)
                except (ValueError, TypeError):  # not a constant / holds a dict
                    pass

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            d = node.args.defaults
            name = getattr(node, "name", "<lambda>")
            try:
                own.setdefault(tuple(ast.literal_eval(x) for x in d), ("defaults", name))
            except (ValueError, TypeError):
                pass
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            collect(node.value, ("name", node.targets[0].id))
    return own


def _has_plus_zero(tree, fname):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == fname:
            for sub in ast.walk(node):
                if (isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Add)
                        and isinstance(sub.right, ast.Constant) and sub.right.value == 0):
                    return True
    return False


def _rel(path):
    return path.relative_to(ROOT).as_posix()


def test_scan_sees_every_gateway_file():
    names = {_rel(p) for p in FILES}
    assert {"firmware/edgefw/dispatch.py", "protocols/regmap.py", "firmware/main.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_no_long_int_constants(path):
    _, code = _compiled(path)
    bad = []
    for co, c in _walk(code):
        for v in _ints(c):
            if not SMALL30[0] <= v <= SMALL30[1] and (_rel(path), v) not in LONG_OK:
                bad.append("%s:%d %s: %d" % (_rel(path), co.co_firstlineno, co.co_name, v))
    assert not bad, "long ints on a 32-bit MicroPython (write them from small parts, " \
        "keep them off the control loop): %s" % bad


def _big_in_tuple(c):
    return isinstance(c, tuple) and any(
        not FROZEN_TUPLE_INT[0] <= v <= FROZEN_TUPLE_INT[1] for v in _ints(c))


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_constant_tuple_ints_fit_a_frozen_small_int_or_are_normalised(path):
    tree, code = _compiled(path)
    own = _owners(tree)
    rel = _rel(path)
    bad = []
    for co, c in _walk(code):
        if not _big_in_tuple(c):
            continue
        kind, name = own.get(c, ("?", "?"))
        if kind == "defaults":
            # MicroPython builds a function's default args at run time (small ints are
            # immediate values in its bytecode): no constant tuple on the board
            continue
        fn = NORMALISED.get((rel, name)) if kind == "name" else None
        if fn is not None:
            assert _has_plus_zero(tree, fn), "%s: %s is listed as normalised by %s(), " \
                "which has no `+ 0`" % (rel, name, fn)
            continue
        if (rel, name) in COMPARED_ONLY:
            continue
        bad.append("%s:%d %s: %r" % (rel, co.co_firstlineno, co.co_name, c))
    assert not bad, "constant tuples with ints beyond -0x2000..0x1FFF (ROM long ints when " \
        "frozen): normalise what is taken from them (v + 0) and list them in NORMALISED, " \
        "or write the ints as separate constants: %s" % bad


def test_scanner_catches_what_it_should(tmp_path):
    # the scanner itself: a const-folded tuple, a long mask, a normalised tuple
    f = tmp_path / "m.py"
    f.write_text("from micropython import const\nBIG = const(100000)\n"
                 "T = ((1, BIG),)\ndef g(x):\n    return x & 0xFFFFFFFF\n"
                 "def h(x=100000):\n    return x in (0, 65280)\n")
    tree, code = _compiled(f)
    longs = [v for _, c in _walk(code) for v in _ints(c) if v >= 1 << 30]
    assert longs == [0xFFFFFFFF]
    tuples = [c for _, c in _walk(code) if _big_in_tuple(c)]
    own = _owners(tree)
    assert ((1, 100000),) in tuples and own[((1, 100000),)] == ("name", "T")
    assert (0, 65280) in tuples and (0, 65280) not in own      # a membership test: caught
    assert own[(100000,)] == ("defaults", "h")                  # default args: exempt

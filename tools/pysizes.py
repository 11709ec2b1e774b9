"""Largest classes and longest functions (lines, from the AST) of the given files:
python tools/pysizes.py firmware/edgefw/*.py  (the house limits: classes < 250 lines,
functions < 80 lines; --top N rows each, default 5)."""
import ast
import sys


def sizes(paths):
    classes, funcs = [], []
    for p in paths:
        tree = ast.parse(open(p).read(), p)
        for n in ast.walk(tree):
            if isinstance(n, (ast.ClassDef, ast.FunctionDef)):
                row = (n.end_lineno - n.lineno + 1, "%s:%s" % (p, n.name))
                (classes if isinstance(n, ast.ClassDef) else funcs).append(row)
    return sorted(classes, reverse=True), sorted(funcs, reverse=True)


def main(argv):
    top = 5
    if argv[:1] == ["--top"]:
        top, argv = int(argv[1]), argv[2:]
    if not argv:
        print("usage: pysizes.py [--top N] FILE.py ...")
        return 2
    classes, funcs = sizes(argv)
    for title, rows in (("classes", classes), ("functions", funcs)):
        print(title)
        for n, name in rows[:top]:
            print("  %5d  %s" % (n, name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

# Minimal test runner for the MicroPython unix port: runs the same test modules that
# pytest runs on CPython (plain `def test_*():` with assert, no fixtures).
# Usage: micropython tools/mpytest.py tests/dual/test_x.py [...]
# Prints pytest-like lines and a closing "N passed, N failed" line.
import sys

try:
    import gc
except ImportError:
    gc = None


# Modules a runtime may lack (the 32-bit WebAssembly port has no socket, no _thread, no
# ssl). A test that needs one is skipped there with the reason printed, never silently.
_OPTIONAL = ("socket", "_thread", "ssl", "select", "termios")
_LACKS = []
for _m in _OPTIONAL:
    try:
        __import__(_m)
    except ImportError:
        _LACKS.append(_m)


def _lacked(e):
    # the runtime's own missing module behind an ImportError, or None (a real failure)
    if not isinstance(e, ImportError):
        return None
    msg = str(e)
    for m in _LACKS:
        if "'%s'" % m in msg:
            return m
    return None


def _cpython_only():
    h = sys.modules.get("_helpers")
    return getattr(h, "CPYTHON_ONLY", ()) if h else ()


def run_file(path, counts):
    d = path.rsplit("/", 1)
    if len(d) == 2 and d[0] not in sys.path:
        sys.path.insert(0, d[0])
    name = d[-1][:-3]
    try:
        mod = __import__(name)
    except Exception as e:  # a module that fails to import fails all its tests
        m = _lacked(e)
        if m:
            print("SKIP %s: needs %s, which this runtime (%s) lacks" % (path, m, _RUNTIME))
            counts[2] += 1
            return
        print("ERROR %s: import failed: %r" % (path, e))
        sys.print_exception(e)
        counts[1] += 1
        return
    names = sorted(n for n in dir(mod) if n.startswith("test_"))
    for n in names:
        fn = getattr(mod, n)
        if n in _cpython_only():
            print("SKIP %s::%s (CPython only)" % (path, n))
            counts[2] += 1
            continue
        try:
            fn()
            print("PASS %s::%s" % (path, n))
            counts[0] += 1
        except Exception as e:
            m = _lacked(e)
            if m:
                print("SKIP %s::%s: needs %s, which this runtime (%s) lacks" % (
                    path, n, m, _RUNTIME))
                counts[2] += 1
                continue
            print("FAIL %s::%s: %r" % (path, n, e))
            sys.print_exception(e)
            counts[1] += 1
        if gc:
            gc.collect()


_RUNTIME = "%s %s, %d-bit" % (sys.platform, ".".join(str(v) for v in
                                                   sys.implementation.version[:3]),
                               32 if sys.maxsize < (1 << 32) else 64)


def main(argv):
    print("runtime:", _RUNTIME)
    if _LACKS:
        print("runtime lacks:", ", ".join(_LACKS))
    counts = [0, 0, 0]
    for p in argv:
        run_file(p, counts)
    line = "micropython: %d passed, %d failed" % (counts[0], counts[1])
    if counts[2]:
        line += ", %d skipped" % counts[2]
    print(line)
    sys.exit(1 if counts[1] or not counts[0] else 0)


main(sys.argv[1:])

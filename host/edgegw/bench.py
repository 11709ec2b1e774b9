"""`make bench`: runs every benchmark module `edgegw.bench_<name>` (each exposes
`run(small=False) -> dict`) and writes one JSON document. Targets live here, never in timed
tests. `--small` runs each in a tiny configuration (tests/host/test_bench_smoke.py runs that
in `make test`, so a bench cannot rot unnoticed; its figures mean nothing)."""
import argparse
import importlib
import json
import pkgutil
import sys
import time

import edgegw


def discover():
    names = []
    for m in pkgutil.iter_modules(edgegw.__path__):
        if m.name.startswith("bench_"):
            names.append(m.name[len("bench_"):])
    return sorted(names)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m edgegw.bench")
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--only", action="append", help="run only these benches (repeatable)")
    ap.add_argument("--small", action="store_true", help="tiny configurations (smoke run)")
    a = ap.parse_args(argv)
    results = {}
    failed = False
    for name in discover():
        if a.only and name not in a.only:
            continue
        mod = importlib.import_module("edgegw.bench_" + name)
        t0 = time.time()
        print("bench %s ..." % name, file=sys.stderr, flush=True)
        try:
            results[name] = mod.run(small=True) if a.small else mod.run()
        except Exception as e:  # a broken bench is reported, the others still run
            results[name] = {"error": repr(e)}
            failed = True
        results[name]["wall_s"] = round(time.time() - t0, 2)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    print(json.dumps(results, indent=2, sort_keys=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

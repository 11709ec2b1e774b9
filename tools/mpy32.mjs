// The 32-bit MicroPython runtime of the project: the official MicroPython WebAssembly
// port (npm @micropython/micropython-webassembly-pyscript, wasm32: small ints are 31 bits
// as on the ESP32), run by Node. It has no host filesystem: the files a run needs are
// copied into its in-memory filesystem at the same absolute paths, and the run starts in
// the same directory, so relative paths (protocols/maps, config.json) work as on unix.
//
// Usage: node tools/mpy32.mjs [-X heapsize=N[k|m]] [--path DIR:DIR] [--copy DIR,...]
//                             SCRIPT [ARGS...]
//        node tools/mpy32.mjs ... -c CODE
// SCRIPT's sys.argv is [SCRIPT, ARGS...]; the exit code is SystemExit's (1 on an
// uncaught exception). The GC heap of this port grows on demand past `heapsize`, so a
// heap size is measured (gc.mem_alloc) by the caller, not enforced here.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const here = path.dirname(new URL(import.meta.url).pathname);
const root = path.resolve(here, "..");

function loadPort() {
  // installed by `make setup` into node_modules/ at the repo root
  const mod = path.join(root, "node_modules", "@micropython",
    "micropython-webassembly-pyscript", "micropython.mjs");
  if (!fs.existsSync(mod)) {
    process.stderr.write("mpy32: " + mod + " is missing: run `make setup` (npm ci)\n");
    process.exit(2);
  }
  return import(mod);
}

function parseSize(s) {
  let n = parseInt(s, 10);
  const suf = s.slice(-1).toLowerCase();
  if (suf === "k") n *= 1024;
  else if (suf === "m") n *= 1048576;
  return n;
}

const args = process.argv.slice(2);
let heap = 2 * 1048576;
let pyPath = process.env.MICROPYPATH || "";
let copy = ["firmware", "protocols", "tests/dual", "tools", "scenarios"];
let code = null;
while (args.length) {
  if (args[0] === "-X" && args.length > 1 && args[1].startsWith("heapsize=")) {
    heap = parseSize(args[1].slice(9)); args.splice(0, 2);
  } else if (args[0] === "--path" && args.length > 1) {
    pyPath = args[1]; args.splice(0, 2);
  } else if (args[0] === "--copy" && args.length > 1) {
    copy = args[1].split(",").filter(Boolean); args.splice(0, 2);
  } else if (args[0] === "-c" && args.length > 1) {
    code = args[1]; args.splice(0, 2); break;
  } else break;
}
if (code === null && !args.length) {
  process.stderr.write("usage: node tools/mpy32.mjs [-X heapsize=N] SCRIPT [ARGS] | -c CODE\n");
  process.exit(2);
}

const { loadMicroPython } = await loadPort();
const mp = await loadMicroPython({
  heapsize: heap,
  linebuffer: false,
  stdout: (d) => process.stdout.write(d),
  stderr: (d) => process.stderr.write(d),
});

// copy the tree the run needs (sources and data, no caches) into the in-memory fs
function copyTree(rel) {
  const src = path.join(process.cwd(), rel);
  if (!fs.existsSync(src)) return;
  const st = fs.statSync(src);
  const dst = src;
  if (st.isFile()) {
    mp.FS.mkdirTree(path.dirname(dst));
    mp.FS.writeFile(dst, fs.readFileSync(src));
    return;
  }
  mp.FS.mkdirTree(dst);
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    if (e.name === "__pycache__" || e.name.startsWith(".")) continue;
    const r = path.join(rel, e.name);
    if (e.isDirectory()) copyTree(r);
    else if (/\.(py|json|txt|jsonl|csv|hex|mpy)$/.test(e.name)) copyTree(r);
  }
}
for (const d of copy) copyTree(d);
mp.FS.mkdirTree(process.cwd());
mp.FS.chdir(process.cwd());

const script = code === null ? path.resolve(args[0]) : "<string>";
const argv = code === null ? [args[0], ...args.slice(1)] : ["-c"];
const dirs = pyPath.split(":").filter(Boolean).map((d) => path.resolve(d));
if (code === null) dirs.unshift(path.dirname(script));
mp.globals.set("_mpy32_argv", argv.join("\u0001"));
mp.globals.set("_mpy32_path", dirs.join("\u0001"));
mp.globals.set("_mpy32_src", code === null ? fs.readFileSync(script, "utf8") : code);
mp.globals.set("_mpy32_file", script);
mp.runPython(`
import sys
sys.argv[:] = _mpy32_argv.split("\\x01")
sys.path[:] = [p for p in _mpy32_path.split("\\x01") if p] + [".frozen"]
_mpy32_rc = 0
_mpy32_gen = None
def _mpy32_run(f, a):
    try:
        f(*a)
    except StopIteration:
        return None
    except SystemExit as e:
        c = e.args[0] if e.args else 0
        return c if isinstance(c, int) else (0 if c is None else 1)
    except BaseException as e:
        sys.print_exception(e)
        return 1
    return 0
def _mpy32_main(src, fname):
    global _mpy32_gen
    g = {"__name__": "__main__", "__file__": fname}
    rc = _mpy32_run(exec, (compile(src, fname, "exec"), g))
    _mpy32_gen = g.get("MPY32_PHASES") if rc == 0 else None
    return rc
def _mpy32_phase():
    # one step of the script's MPY32_PHASES generator per top-level call
    global _mpy32_gen, _mpy32_rc
    rc = _mpy32_run(next, (_mpy32_gen,))
    if rc != 0:
        _mpy32_gen = None
        _mpy32_rc = 0 if rc is None else rc
_mpy32_rc = _mpy32_main(_mpy32_src, _mpy32_file)
`);
// This port collects garbage only between top-level calls (gc.collect() inside a run
// just marks a collection due; it cannot scan the wasm stack). A script that needs the
// heap collected between steps (memory benches) leaves a generator in MPY32_PHASES:
// each step runs in its own call, so the heap is collected before the next one.
while (mp.globals.get("_mpy32_gen") != null) mp.runPython("_mpy32_phase()");
process.exitCode = mp.globals.get("_mpy32_rc");

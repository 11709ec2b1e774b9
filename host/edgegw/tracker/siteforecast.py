"""A site forecast for the tracker to send beside the compute forecast: PV and/or aux load
(e.g. a weather service's PV forecast, a building system's plan), the optional `pv_w` /
`aux_w` fields of the forecast topic that the gateway keeps and plans with until `exp`
(docs/tracker.md).

File: CSV with a header `t` plus `pv_w` and/or `aux_w` (a cell may be empty: no figure
there); `t` in the time base of the forecast's t0 (unix s with `--clock local`, the
gateway's site time with `--clock gateway`), rows in increasing `t`. Each row holds until
the next; the last one for as long as the step before it. A forecast step takes the value
the file holds at the step's start; the list ends at the first step the file does not
reach, and a field the file does not cover from t0 on is left out."""
import csv
import io
import os

from protocols.topics import P_ABS_MAX_W as MAX_W  # what the gateway's check takes

FIELDS = ("pv_w", "aux_w")


class SiteForecastError(ValueError):
    pass


def parse(text, name="site forecast"):
    """-> {"t": [...], "pv_w": [... or None], "aux_w": [...]} (only the columns present)."""
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise SiteForecastError("%s: empty (need a header t,pv_w[,aux_w])" % name)
    head = [c.strip() for c in rows[0]]
    cols = [f for f in FIELDS if f in head]
    if "t" not in head or not cols:
        raise SiteForecastError("%s: header %s: need t and pv_w and/or aux_w"
                                % (name, ",".join(head)))
    out = {"t": []}
    for f in cols:
        out[f] = []
    ti = head.index("t")
    for n, r in enumerate(rows[1:], 2):
        cell = dict(zip(head, (c.strip() for c in r)))
        try:
            t = int(cell.get("t", ""))
        except ValueError:
            raise SiteForecastError("%s line %d: t %r is not an integer" % (name, n, r[ti:ti + 1]))
        if out["t"] and t <= out["t"][-1]:
            raise SiteForecastError("%s line %d: t %d not after %d" % (name, n, t, out["t"][-1]))
        out["t"].append(t)
        for f in cols:
            v = cell.get(f, "")
            if v == "":
                out[f].append(None)
                continue
            try:
                w = int(round(float(v)))
            except ValueError:
                raise SiteForecastError("%s line %d: %s %r is not a number" % (name, n, f, v))
            if not 0 <= w <= MAX_W:
                raise SiteForecastError("%s line %d: %s %d not in 0..%d W" % (name, n, f, w, MAX_W))
            out[f].append(w)
    if not out["t"]:
        raise SiteForecastError("%s: no rows under the header" % name)
    return out


def steps(fc, t0, step_s, n):
    """{"pv_w": [...], "aux_w": [...]}: the file's figures on the forecast's n steps from
    t0 (fields that cover no step from t0 are left out)."""
    ts = fc["t"]
    last = ts[-1] + (ts[-1] - ts[-2] if len(ts) > 1 else step_s)  # the last row's end
    out = {}
    for f in FIELDS:
        vals = fc.get(f)
        if vals is None:
            continue
        got = []
        i = 0
        for k in range(n):
            t = t0 + k * step_s
            if t < ts[0] or t >= last:
                break
            while i + 1 < len(ts) and ts[i + 1] <= t:
                i += 1
            if vals[i] is None:
                break
            got.append(vals[i])
        if got:
            out[f] = got
    return out


class SiteForecastFile:
    """`(t0, step_s, n) -> fields` for the Tracker; the file is read again when it changes
    (a weather export rewritten every hour). A file that turns bad keeps the last good
    figures and says why in `error`."""

    def __init__(self, path):
        self.path = path
        self.fc = None
        self.error = None
        self._mtime = None
        self._read()
        if self.error:
            raise SiteForecastError(self.error)

    def _read(self):
        try:
            m = os.stat(self.path).st_mtime_ns
            if m == self._mtime:
                return
            with open(self.path, encoding="utf-8-sig") as f:
                self.fc = parse(f.read(), self.path)
            self._mtime = m
            self.error = None
        except (OSError, UnicodeDecodeError, SiteForecastError) as e:
            self.error = str(e) if isinstance(e, SiteForecastError) else \
                "%s: cannot read it (%s)" % (self.path, getattr(e, "strerror", None) or e)

    def __call__(self, t0, step_s, n):
        self._read()
        return steps(self.fc, t0, step_s, n) if self.fc else {}

"""What `edgegw link collect` hands the ecosystem: each first-arrival telemetry record
(deduplicated by seq) as InfluxDB line protocol (influxdb-client's Point), and the latest
record of each gateway as Prometheus metrics (prometheus_client, built on each scrape).

Names: a telemetry field `grid_w` becomes the Influx field `grid_w` and the Prometheus
gauge `edgegw_grid_w{device="<id>"}`; an energy counter `e.pv_wh` becomes the Influx field
`e_pv_wh` and the gauge `edgegw_e_pv_wh`, a ledger field `g.cur.cfe_cpct` the field
`g_cur_cfe_cpct`. Only the fields of protocols.topics
.telemetry_fields() that hold integers are exported (text: `state` is an Influx tag and
the gauge `edgegw_link_state{state=...}` = 1). docs/mqtt.md "Outputs for the ecosystem".
"""
import threading

from protocols import topics as T

MEASUREMENT = "edgegw"
PROM_PREFIX = "edgegw_"

# the integer fields a record may carry, in telemetry_fields() order ("e.", "g." kept)
_NUMERIC = [f for f in T.telemetry_fields() if f not in ("state", "safety")]


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def numeric(rec):
    """[(name, value)] of the record's integer fields, "e.pv_wh" named "e_pv_wh"."""
    out = []
    for f in _NUMERIC:
        v = rec
        for part in f.split("."):   # "e.pv_wh", "g.cur.cfe_cpct": nested objects
            v = v.get(part) if isinstance(v, dict) else None
        if _int(v):
            out.append((f.replace(".", "_"), v))
    return out


def metric_names():
    """Every Prometheus metric name the exporter can produce (the dashboard check)."""
    names = [PROM_PREFIX + f.replace(".", "_") for f in _NUMERIC]
    names += [PROM_PREFIX + "link_state", PROM_PREFIX + "last_seen_ts",
              PROM_PREFIX + "collector_received", PROM_PREFIX + "collector_duplicates",
              PROM_PREFIX + "collector_lost"]
    return names


class InfluxSink:
    """Writes one line of InfluxDB line protocol per telemetry record to a text stream:
    `edgegw,device=<id>,state=ONLINE grid_w=1200i,... <ts>` (second precision)."""

    def __init__(self, stream):
        from influxdb_client.client.write.point import Point, WritePrecision
        self._point = Point
        self._prec = WritePrecision.S
        self.stream = stream
        self.lines = 0

    def line(self, device, rec):
        p = self._point(MEASUREMENT).tag("device", device)
        if isinstance(rec.get("state"), str):
            p.tag("state", rec["state"])
        for k, v in numeric(rec):
            if k != "ts":
                p.field(k, v)
        if _int(rec.get("ts")):
            p.time(rec["ts"], self._prec)
        return p.to_line_protocol()

    def record(self, device, leaf, rec):
        if leaf != T.TELEMETRY:
            return
        ln = self.line(device, rec)
        if not ln:        # no field at all: line protocol has no such line
            return
        self.stream.write(ln + "\n")
        self.stream.flush()
        self.lines += 1


class PromSink:
    """Keeps the newest telemetry record per gateway (highest seq: a record drained late
    from the gateway's ring does not overwrite a newer one) and serves them as gauges."""

    def __init__(self, collector=None):
        from prometheus_client.core import GaugeMetricFamily
        from prometheus_client.registry import CollectorRegistry
        self._gauge = GaugeMetricFamily
        self.lock = threading.Lock()
        self.latest = {}   # device -> record
        self.collector = collector   # cmd_link.Collector: its counts as metrics too
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.server = None

    def record(self, device, leaf, rec):
        if leaf != T.TELEMETRY or not _int(rec.get("seq")):
            return
        with self.lock:
            old = self.latest.get(device)
            if old is None or rec["seq"] > old["seq"]:
                self.latest[device] = rec

    def describe(self):
        return []   # metrics appear as gateways report (no fixed set at registration)

    def collect(self):
        with self.lock:
            latest = dict(self.latest)
        fams = {}

        def g(name, doc, labels=("device",)):
            if name not in fams:
                fams[name] = self._gauge(PROM_PREFIX + name, doc, labels=list(labels))
            return fams[name]
        for dev in sorted(latest):
            rec = latest[dev]
            for k, v in numeric(rec):
                if k == "ts":
                    g("last_seen_ts", "ts of the newest telemetry record (unix s)") \
                        .add_metric([dev], v)
                else:
                    g(k, "telemetry field %s (unit in the name)" % k).add_metric([dev], v)
            st = rec.get("state")
            if isinstance(st, str):
                g("link_state", "link state of the gateway (1 = this state)",
                  ("device", "state")).add_metric([dev, st], 1)
        c = self.collector
        if c is not None:
            r = c.report()
            g("collector_received", "records kept (after dedup)", ()).add_metric([], r["received"])
            g("collector_duplicates", "copies dropped by seq", ()).add_metric([], r["dup"])
            g("collector_lost", "seq gaps within a boot", ()).add_metric([], r["lost"])
        return list(fams.values())

    def serve(self, port, addr="127.0.0.1"):
        from prometheus_client import start_http_server
        self.server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return self.server

    def close(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

# The northbound link: telemetry and events out (outbox.py: store-and-forward while the
# broker is unreachable), signed commands in (verified, checked, applied, acked here), and
# the link-loss state machine the control loop reads (linkstate.py: ONLINE, GRACE,
# FALLBACK, RECOVERING). Spec: docs/mqtt.md.
import json
import os

from edgefw import auth, clock
from edgefw.linkstate import FALLBACK, GRACE, ONLINE, RECOVERING, LinkState  # noqa: F401
from edgefw.mqtt import NO_CA, MQTTClient
from edgefw.kept import KINDS as KEPT, Kept
from edgefw.outbox import K_EVENT, K_TELEMETRY, Outbox
from edgefw.ring import Ring
from protocols import topics as T

RING_SEG_MAX_KB = 16  # largest ring segment (KB): it must fit the heap at once

# name: (lo, hi, default); None default = optional
_INTS = (
    ("port", 1, 65535, None),
    ("keepalive_s", 1, 3600, 30),
    ("grace_s", 0, 3600, 30),
    ("loss_s", 0, 86400, 0),
    ("recover_s", 1, 3600, 60),
    ("ramp_w_s", 1, 1000000, 1000),
    ("ring_kb", 4, 4096, 64),
    ("ring_segs", 2, 64, 8),
    ("telemetry_ms", 100, 3600000, 10000),
    ("backoff_min_ms", 50, 600000, 1000),
    ("backoff_max_ms", 50, 3600000, 60000),
    ("window", 1, 32, 4),
    ("sp_max_w", 0, T.P_ABS_MAX_W, 1000000),
)
_STRS = ("host", "ca", "user", "password", "key")
# tls: MQTT over TLS, the broker's certificate verified against the CA file `ca`;
# insecure: TLS without that check (reported at boot and in status, docs/mqtt.md)
_BOOLS = ("tls", "insecure")


def validate_link_cfg(d):
    """Check the config "link" section; fills defaults in place. Returns a list of
    "link.field: problem" ([] = valid). No host = the link is off."""
    if not isinstance(d, dict):
        return ["link: must be an object"]
    errs = []
    for k in d:
        known = k in _BOOLS
        for x in _INTS:
            if x[0] == k:
                known = True
        if not known and k not in _STRS:
            errs.append("link.%s: unknown field (typo?)" % k)
    for k in _STRS:
        v = d.get(k)
        if v is not None and (not isinstance(v, str) or not v or len(v) > 255):
            errs.append("link.%s: %r is not text" % (k, v))
            v = None
        d[k] = v
    for k in _BOOLS:
        x = d.get(k, False)
        if not isinstance(x, bool):
            errs.append("link.%s: %r is not true/false" % (k, x))
            x = False
        d[k] = x
    tls = d["tls"]
    if d["insecure"] and not tls:
        errs.append("link.insecure: true only with tls true (it turns off the broker's "
                    "certificate check)")
    for k, lo, hi, dflt in _INTS:
        v = d.get(k, dflt)
        if k == "port" and v is None:
            v = 8883 if tls else 1883
        if not isinstance(v, int) or isinstance(v, bool):
            errs.append("link.%s: %r is not an integer" % (k, v))
            v = dflt
        elif v < lo or v > hi:
            errs.append("link.%s: %d out of range %d..%d" % (k, v, lo, hi))
            v = dflt
        # + 0: a default read from the constant tuple _INTS is a ROM long int in a frozen
        # image (ints beyond -0x2000..0x1FFF); every op on it would allocate. Once, here.
        d[k] = None if v is None else v + 0
    if d["key"] is not None:
        try:
            auth.parse_key(d["key"])
        except ValueError as e:
            errs.append("link.key: %s" % e.args[0])
    if (d["backoff_max_ms"] or 0) < (d["backoff_min_ms"] or 0):
        errs.append("link.backoff_max_ms: %d below backoff_min_ms %d"
                    % (d["backoff_max_ms"], d["backoff_min_ms"]))
    if d["ring_kb"] and d["ring_segs"] and d["ring_kb"] * 1024 // d["ring_segs"] < 1024:
        errs.append("link.ring_segs: %d segments of a %d KB ring are below 1 KB each"
                    % (d["ring_segs"], d["ring_kb"]))
    # a segment is read whole into RAM when the ring is scanned or drained
    if d["ring_kb"] and d["ring_segs"] and d["ring_kb"] > RING_SEG_MAX_KB * d["ring_segs"]:
        errs.append("link.ring_kb: %d KB in %d segments is over %d KB per segment (each is "
                    "read whole into RAM): use more ring_segs or a smaller ring"
                    % (d["ring_kb"], d["ring_segs"], RING_SEG_MAX_KB))
    return errs


def tls_mode(c):
    """"off" (plain MQTT), "verified" (the broker checked against link.ca),
    "INSECURE" (TLS, the broker not verified: link.insecure) or "no CA" (TLS asked
    for without a CA file: the link does not connect)."""
    if not c["tls"]:
        return "off"
    if c["insecure"]:
        return "INSECURE"
    return "verified" if c["ca"] else "no CA"


def tls_warning(c):
    m = tls_mode(c)
    if m == "INSECURE":
        return ("TLS without verifying the broker's certificate (link.insecure true): "
                "anyone on the path can pose as the broker; set link.ca")
    if m == "no CA":
        return NO_CA
    return None


def check_config(c, on_config):
    """The problems of a remote config (gateway and link checks, then the app's own
    trial: on_config), [] when taken."""
    from edgefw import config
    errs = config.validate(c)
    if not errs:
        errs = validate_link_cfg(c.get("link"))
    if errs:
        return errs
    if not on_config:
        return ["config: this gateway takes no remote config"]
    return on_config(c) or []


def _bound(v, m):
    return m if v is None else min(m, v)


def _forget(name):
    """Drop a module used once per boot (edgefw.NAME) so its code and tables are
    collected: HA discovery is about 4.7 KB on 32-bit with the code as .mpy."""
    import sys
    sys.modules.pop("edgefw." + name, None)
    import edgefw
    try:
        delattr(edgefw, name)
    except AttributeError:
        pass


class Link:
    def __init__(self, cfg, device_id, fs_dir, limits=None):
        errs = validate_link_cfg(cfg)
        if errs:
            raise ValueError("; ".join(errs))
        self.cfg = cfg
        self.device_id = device_id
        self.dir = fs_dir
        try:
            os.mkdir(fs_dir)
        except OSError:
            pass
        self.enabled = cfg["host"] is not None
        lim = limits or {}
        m = cfg["sp_max_w"]
        # a PCS limit of 0 means 0 W allowed that way (not "no limit"); absent = sp_max_w
        self.sp_lo = -_bound(lim.get("pcs_charge_max_w"), m)
        self.sp_hi = _bound(lim.get("pcs_discharge_max_w"), m)
        key = auth.parse_key(cfg["key"]) if cfg["key"] else None
        self.verifier = auth.Verifier(key, device_id, fs_dir + "/link_cmd_seq.json")
        self.n = {"tx": 0, "tx_ring": 0, "acked": 0, "spilled": 0, "cmd_ok": 0,
                  "cmd_rejected": 0, "lost_fs": 0}
        ring = Ring(fs_dir + "/ring", cfg["ring_kb"] * 1024, cfg["ring_segs"])
        self.outbox = Outbox(fs_dir, device_id, ring, cfg["window"], self.n)
        self.now_ms = clock.ticks_ms()
        self.hold = LinkState(cfg, self.now_ms, self._state_event)
        # the last accepted schedule, forecast and tariff survive a reboot (FALLBACK
        # follows them until they expire); the setpoint is hold.sp
        self.kept = Kept(fs_dir)
        # callbacks for the application (None = not interested)
        self.on_setpoint = None  # (p_w, exp)
        # (kind, what Kept keeps) for a schedule, forecast or tariff; check_tariff first
        self.on_input = None
        self.check_tariff = None  # (tariff dict | None) -> list of errors ([] = taken)
        self.on_config = None    # (cfg) -> list of errors ([] = taken)
        self.on_ota = None       # (verified offer dict), ota.py
        self.on_ota_chunk = None  # (payload bytes): not signed, checked by sha256
        self.client = None
        self.hadisc = None      # the discovery under way (hadisc.py: imported only then)
        self.ha_due = False
        if self.enabled:
            st_topic = T.topic(device_id, T.STATUS)
            will = json.dumps(T.status(False, clock.time(), self.outbox.boot))
            c = MQTTClient(device_id, cfg["host"], cfg["port"], cfg["keepalive_s"],
                           tls=cfg["tls"], ca=cfg["ca"], insecure=cfg["insecure"],
                           user=cfg["user"],
                           password=cfg["password"], will=(st_topic, will, 1, True),
                           backoff_min_ms=cfg["backoff_min_ms"],
                           backoff_max_ms=cfg["backoff_max_ms"], resend=False)
            c.on_connect = self._on_connect
            c.on_disconnect = self._on_disconnect
            c.on_puback = self._on_puback
            c.on_message = self._on_message
            c.subscribe(T.topic(device_id, "cmd/+"), 1)
            c.subscribe(T.topic(device_id, T.FORECAST), 1)
            c.subscribe(T.topic(device_id, T.OTA_OFFER), 1)
            c.subscribe(T.topic(device_id, T.OTA_CHUNK), 1)
            self.client = c
            self.ha_due = True  # Home Assistant discovery, once per boot when connected
            w = self.tls_warning()
            if w:
                self.event("tls", {"tls": self.tls_mode(), "why": w})  # the cloud hears too

    # ---- API for the application ------------------------------------------------------

    def poll(self, now_ms):
        """Non-blocking: network I/O, ring drain, state machine."""
        dt = clock.ticks_diff(now_ms, self.now_ms)
        self.now_ms = now_ms
        if self.kept.pending and self.on_input and clock.valid():
            self.kept.replay(self.on_input)   # once: what was kept before a reboot
        if self.client is None:
            return
        self.client.poll(now_ms)
        self.outbox.drain(self.client)
        if self.ha_due:
            self._discovery()
        self.hold.step(now_ms, dt, self.client.connected)

    def _discovery(self):
        if self.hadisc is None:
            if not self.client.connected:
                return  # an offline gateway holds no discovery code
            from edgefw.hadisc import Discovery
            self.hadisc = Discovery(self.device_id)
        self.hadisc.poll(self.client)
        if self.hadisc.done:
            self.hadisc = None
            self.ha_due = False
            _forget("hadisc")

    @property
    def connected(self):
        return self.client is not None and self.client.connected

    # the state machine's and the outbox's figures, under the names the rest reads
    @property
    def state(self):
        return self.hold.state

    @state.setter
    def state(self, st):
        self.hold.state = st

    def setpoint(self, now_s, local_w=None, rel=False):
        """The cloud setpoint to apply now or None: linkstate.LinkState.setpoint."""
        return self.hold.setpoint(now_s, local_w, rel)

    def telemetry(self, rec):
        """Send a telemetry record (dict of integers); seq, ts, state are added."""
        d = dict(rec)
        d["state"] = self.state
        self._out(K_TELEMETRY, d)

    def event(self, kind, data=None):
        self._out(K_EVENT, T.event(0, 0, kind, data))

    def headroom(self, d):
        """Publish the green headroom (retained, latest value only: not stored)."""
        if self.connected:
            d = dict(d)
            d["ts"] = clock.time()
            self.client.publish(T.topic(self.device_id, T.HEADROOM), json.dumps(d), 0, True)

    def tls_mode(self):
        return tls_mode(self.cfg)

    def tls_warning(self):
        """The text the gateway reports at boot for an unverified or unusable TLS link,
        else None."""
        return tls_warning(self.cfg) if self.enabled else None

    def stats(self):
        s = dict(self.n)
        s["state"] = self.state
        s["tls"] = self.tls_mode()
        s["connected"] = self.connected
        ob = self.outbox
        s["seq"] = ob.seq
        s["boot"] = ob.boot
        s["ring_n"] = len(ob.ring)
        s["ring_dropped"] = ob.ring.dropped
        s["ring_torn"] = ob.ring.torn
        if self.client:
            s["connects"] = self.client.connects
            s["fails"] = self.client.fails
            s["last_error"] = self.client.last_error
        return s

    def close(self):
        if self.client:
            self.client.disconnect()

    # ---- outgoing -------------------------------------------------------------------------

    def _out(self, kind, d):
        if self.client is not None:
            self.outbox.send(self.client, kind, d)

    def _on_puback(self, pid):
        self.outbox.puback(pid)

    def _state_event(self, old, st, why):
        self.event("state", {"from": old, "to": st, "why": why})

    def _on_connect(self):
        self.hold.heard_ms = self.now_ms
        c = self.client
        c.publish(T.topic(self.device_id, T.STATUS),
                  json.dumps(T.status(True, clock.time(), self.outbox.boot)), 1, True)

    def _on_disconnect(self, reason):
        self.outbox.disconnected()

    # ---- incoming commands ----------------------------------------------------------------

    def _ack(self, seq, kind, ok, reason, detail=None):
        if self.connected:
            a = T.ack(seq, clock.time(), kind, ok, reason, self.state, detail)
            self.client.publish(T.topic(self.device_id, T.ACK), json.dumps(a), 1)

    def _on_message(self, topic, payload, retain):
        dev, leaf = T.split(topic)
        if leaf == T.OTA_CHUNK and dev == self.device_id:
            if self.on_ota_chunk:
                self.on_ota_chunk(payload)
            return
        kind = T.COMMANDS.get(leaf)
        if dev != self.device_id or kind is None:
            return
        try:
            cmd = json.loads(payload)
        except ValueError:
            cmd = None
        seq = cmd.get("seq") if isinstance(cmd, dict) else None
        now_s = clock.time()
        reason = self.verifier.check(kind, cmd, now_s)
        detail = None
        if reason == auth.OK:
            self.hold.heard_ms = self.now_ms  # a genuine cloud message: the link is alive
            if kind == "setpoint":
                errs = T.check_setpoint(cmd, self.sp_lo, self.sp_hi)
            else:
                errs = T.CHECKS[kind](cmd)
            if not errs and kind == "config":
                errs = check_config(cmd["config"], self.on_config)
            if not errs and kind == "tariff":
                errs = self.check_tariff(cmd["tariff"]) if self.check_tariff else \
                    ["tariff: this gateway has no local dispatch to take it"]
            if not errs and kind == "ota" and not self.on_ota:
                errs = ["ota: this gateway takes no firmware update"]
            if errs:
                reason = T.OUT_OF_BOUNDS if kind == "setpoint" else T.INVALID
                detail = errs[0]
        if reason != auth.OK:
            self.n["cmd_rejected"] += 1
            self._ack(seq, kind, False, reason, detail)
            return
        self.verifier.accept(kind, cmd)
        self.n["cmd_ok"] += 1
        self._apply(kind, cmd)
        self._ack(seq, kind, True, auth.OK)

    def _apply(self, kind, cmd):
        if kind == "setpoint":
            # applies at most exp - ts from now on the gateway's clock: a gateway clock
            # behind the sender's (ts in our future) must not stretch the setpoint's life
            exp = cmd["exp"]
            now = clock.time()
            life = exp - cmd["ts"]
            if now + life < exp:
                exp = now + life
            # exp_r: the expiry in clock.rel() seconds, made once here (not every step)
            self.hold.sp = {"p_w": cmd["p_w"], "exp": exp, "exp_r": exp - clock.EPOCH,
                            "seq": cmd["seq"]}
            if self.on_setpoint:
                self.on_setpoint(cmd["p_w"], exp)
        elif kind in KEPT:
            d = self.kept.take(kind, cmd)
            if not clock.valid():
                self.kept.pending = True    # handed over once the clock can place it
            elif self.on_input:
                self.on_input(kind, d)
        elif kind == "ota":
            self.on_ota(cmd)

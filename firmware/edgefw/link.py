# The northbound link: telemetry and events out (store-and-forward while the broker is
# unreachable), signed commands in, and the link-loss state machine the control loop reads:
#   ONLINE     cloud setpoints apply
#   GRACE      link lost: the last cloud setpoint is held at most grace_s
#   FALLBACK   local dispatch (following the last schedule until it expires)
#   RECOVERING link back: ramp from the local setpoint to the cloud one, then ONLINE
# Loss = the MQTT connection fails (socket error, or no answer to keepalive pings) or, if
# loss_s > 0, no valid command from the cloud for loss_s. Spec: docs/mqtt.md.
import json
import os

from edgefw import auth, clock
from edgefw.hadisc import Discovery
from edgefw.mqtt import NO_CA, MQTTClient
from edgefw.ring import Ring
from edgefw.store import write_atomic, write_json
from protocols import topics as T

ONLINE = "ONLINE"
GRACE = "GRACE"
FALLBACK = "FALLBACK"
RECOVERING = "RECOVERING"

RING_SEG_MAX_KB = 16  # largest ring segment (KB): it must fit the heap at once
K_TELEMETRY = 1  # ring record kinds -> topic
K_EVENT = 2
_TOPIC_OF = {K_TELEMETRY: T.TELEMETRY, K_EVENT: T.EVENTS}

_SEQ_BLOCK = 1000  # seq numbers reserved per write of the seq file (flash wear)

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


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)  # from the file: not its whole text as one string
    except (OSError, ValueError):
        return None


def _bound(v, m):
    return m if v is None else min(m, v)


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
        self.ring = Ring(fs_dir + "/ring", cfg["ring_kb"] * 1024, cfg["ring_segs"])
        # outgoing seq: one counter for telemetry and events, kept rising across reboots
        # by reserving blocks of _SEQ_BLOCK (one file write per block, not per record)
        st = _read_json(fs_dir + "/link_tx_seq.json") or {}
        self.seq = st.get("next", 0)
        self.boot = st.get("boot", 0) + 1
        self._seq_res = self.seq
        self._reserve()
        # the last accepted commands; schedule and forecast survive a reboot (FALLBACK
        # follows them until they expire)
        self.sp = None
        self.schedule = _read_json(fs_dir + "/link_schedule.json")
        self.forecast = _read_json(fs_dir + "/link_forecast.json")
        # callbacks for the application (None = not interested)
        self.on_setpoint = None  # (p_w, exp)
        self.on_schedule = None  # ({"windows": [...], "exp": s})
        self.on_forecast = None  # (forecast dict)
        self.on_config = None    # (cfg) -> list of errors ([] = taken)
        self.on_ota = None       # (verified offer dict), ota.py
        self.on_ota_chunk = None  # (payload bytes): not signed, checked by sha256
        self.state = FALLBACK    # no cloud setpoint yet: local dispatch
        self.now_ms = clock.ticks_ms()
        self._t_state = self.now_ms
        self._heard = self.now_ms
        self._ramp = None        # RECOVERING: current ramped W
        self._ramp_carry = 0
        self._local_w = None
        self.inflight = []       # [pid, ring token or None, kind, seq, payload, acked]
        self.n = {"tx": 0, "tx_ring": 0, "acked": 0, "spilled": 0, "cmd_ok": 0,
                  "cmd_rejected": 0, "lost_fs": 0}
        self.client = None
        self.hadisc = None
        if self.enabled:
            st_topic = T.topic(device_id, T.STATUS)
            will = json.dumps(T.status(False, clock.time(), self.boot))
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
            self.hadisc = Discovery(device_id)  # Home Assistant discovery, once per boot
            w = self.tls_warning()
            if w:
                self.event("tls", {"tls": self.tls_mode(), "why": w})  # the cloud hears too

    # ---- API for the application ------------------------------------------------------

    def poll(self, now_ms):
        """Non-blocking: network I/O, ring drain, state machine."""
        dt = clock.ticks_diff(now_ms, self.now_ms)
        self.now_ms = now_ms
        if self.client is None:
            return
        self.client.poll(now_ms)
        self._drain()
        if self.hadisc is not None:
            self.hadisc.poll(self.client)
            if self.hadisc.done:
                self.hadisc = None
        self._step(dt)

    @property
    def connected(self):
        return self.client is not None and self.client.connected

    def setpoint(self, now_s, local_w=None, rel=False):
        """The cloud setpoint (W, + = discharge) to apply now, or None = use local dispatch.
        now_s: unix s, or with rel s since clock.EPOCH (clock.rel(): what the control loop
        passes, a small int on 32-bit where unix time is a long int).
        local_w: what local dispatch would do now (the start of the bumpless ramp).
        The caller still bounds the result by PCS rating, BMS and site limits."""
        if local_w is not None:
            self._local_w = local_w
        sp = self.sp
        live = sp is not None and sp["exp_r" if rel else "exp"] > now_s
        if self.state == ONLINE or self.state == GRACE:
            return sp["p_w"] if live else None
        if self.state == RECOVERING and live:
            if self._ramp is None:
                self._ramp = sp["p_w"] if self._local_w is None else self._local_w
                self._ramp_carry = 0
            return self._ramp
        return None

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
        """"off" (plain MQTT), "verified" (the broker checked against link.ca),
        "INSECURE" (TLS, the broker not verified: link.insecure) or "no CA" (TLS asked
        for without a CA file: the link does not connect)."""
        c = self.cfg
        if not c["tls"]:
            return "off"
        if c["insecure"]:
            return "INSECURE"
        return "verified" if c["ca"] else "no CA"

    def tls_warning(self):
        """The text the gateway reports at boot for an unverified or unusable TLS link,
        else None."""
        if not self.enabled:
            return None
        m = self.tls_mode()
        if m == "INSECURE":
            return ("TLS without verifying the broker's certificate (link.insecure true): "
                    "anyone on the path can pose as the broker; set link.ca")
        if m == "no CA":
            return NO_CA
        return None

    def stats(self):
        s = dict(self.n)
        s["state"] = self.state
        s["tls"] = self.tls_mode()
        s["connected"] = self.connected
        s["seq"] = self.seq
        s["boot"] = self.boot
        s["ring_n"] = len(self.ring)
        s["ring_dropped"] = self.ring.dropped
        s["ring_torn"] = self.ring.torn
        if self.client:
            s["connects"] = self.client.connects
            s["fails"] = self.client.fails
            s["last_error"] = self.client.last_error
        return s

    def close(self):
        if self.client:
            self.client.disconnect()

    # ---- outgoing -------------------------------------------------------------------------

    def _reserve(self):
        if self.seq >= self._seq_res:
            self._seq_res = self.seq + _SEQ_BLOCK
            write_atomic(self.dir + "/link_tx_seq.json",
                          json.dumps({"next": self._seq_res, "boot": self.boot}))

    def _out(self, kind, d):
        if self.client is None:
            return
        d["seq"] = self.seq
        d["ts"] = clock.time()
        d["boot"] = self.boot
        self.seq += 1
        self._reserve()
        payload = json.dumps(d)
        c = self.client
        if c.connected and len(self.ring) == 0 and len(self.inflight) < self.cfg["window"]:
            pid = c.publish(T.topic(self.device_id, _TOPIC_OF[kind]), payload, 1)
            if pid:
                self.inflight.append([pid, None, kind, d["seq"], payload, False])
                self.n["tx"] += 1
                return
        # store and forward; sent records still in flight go first to keep the order
        self._spill()
        self._store(kind, d["seq"], payload)

    def _store(self, kind, seq, payload):
        try:
            self.ring.append(kind, seq, payload)
        except (OSError, ValueError):
            self.n["lost_fs"] += 1  # filesystem full or broken: counted, not fatal

    def _spill(self):
        # records sent directly and not acked move into the ring (they may arrive twice;
        # receivers drop the copy by seq)
        keep = []
        for e in self.inflight:
            if e[1] is None:
                self._store(e[2], e[3], e[4])
                self.n["spilled"] += 1
            else:
                keep.append(e)
        self.inflight = keep

    def _drain(self):
        c = self.client
        while c.connected and len(self.inflight) < self.cfg["window"] and c.can_publish() \
                and self.ring.unsent():
            x = self.ring.next()
            if x is None:
                return
            tok, kind, seq, payload = x
            pid = c.publish(T.topic(self.device_id, _TOPIC_OF.get(kind, T.EVENTS)), payload, 1)
            self.inflight.append([pid, tok, kind, seq, payload, False])
            self.n["tx_ring"] += 1

    def _on_puback(self, pid):
        for e in self.inflight:
            if e[0] == pid:
                e[5] = True
                break
        while self.inflight and self.inflight[0][5]:
            e = self.inflight.pop(0)
            self.n["acked"] += 1
            if e[1] is not None:
                self.ring.ack(e[1])

    def _on_connect(self):
        self._heard = self.now_ms
        c = self.client
        c.publish(T.topic(self.device_id, T.STATUS),
                  json.dumps(T.status(True, clock.time(), self.boot)), 1, True)

    def _on_disconnect(self, reason):
        self._spill()
        self.inflight = []
        self.ring.rewind()

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
            self._heard = self.now_ms  # a genuine cloud message: the link is alive
            if kind == "setpoint":
                errs = T.check_setpoint(cmd, self.sp_lo, self.sp_hi)
            else:
                errs = T.CHECKS[kind](cmd)
            if not errs and kind == "config":
                errs = self._check_config(cmd["config"])
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

    def _check_config(self, c):
        from edgefw import config
        errs = config.validate(c)
        if not errs:
            errs = validate_link_cfg(c.get("link"))
        if not errs and self.on_config:
            errs = self.on_config(c) or []
        elif not errs:
            errs = ["config: this gateway takes no remote config"]
        return errs

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
            self.sp = {"p_w": cmd["p_w"], "exp": exp, "exp_r": exp - clock.EPOCH,
                       "seq": cmd["seq"]}
            if self.on_setpoint:
                self.on_setpoint(cmd["p_w"], exp)
        elif kind == "schedule":
            self.schedule = {"windows": cmd["windows"], "exp": cmd["exp"]}
            self._save("schedule", self.schedule)
            if self.on_schedule:
                self.on_schedule(self.schedule)
        elif kind == "ota":
            self.on_ota(cmd)
        elif kind == "forecast":
            f = {}
            for k in cmd:
                if k != "sig":
                    f[k] = cmd[k]
            self.forecast = f
            self._save("forecast", f)
            if self.on_forecast:
                self.on_forecast(f)

    def _save(self, name, d):
        try:
            # json.dump to the file: a forecast's text (2 KB+) is never one string
            write_json("%s/link_%s.json" % (self.dir, name), d)
        except OSError:
            pass

    # ---- state machine ------------------------------------------------------------------

    def _set(self, st, why):
        old = self.state
        self.state = st
        self._t_state = self.now_ms
        if st != RECOVERING:
            self._ramp = None
        self.event("state", {"from": old, "to": st, "why": why})

    def _step(self, dt):
        now = self.now_ms
        ls = self.cfg["loss_s"]
        silent = ls and clock.ticks_diff(now, self._heard) >= ls * 1000
        up = self.client.connected and not silent
        in_state = clock.ticks_diff(now, self._t_state)
        st = self.state
        if st == ONLINE:
            if not up:
                self._set(GRACE, "cloud silent" if silent else "broker lost")
        elif st == GRACE:
            if up:
                self._set(ONLINE, "link back within grace")
            elif in_state >= self.cfg["grace_s"] * 1000:
                self._set(FALLBACK, "grace expired")
        elif st == FALLBACK:
            if up:
                self._set(RECOVERING, "link back")
        elif st == RECOVERING:
            if not up:
                self._set(FALLBACK, "link lost while recovering")
            elif self._ramp is not None and self.sp is not None:
                self._ramp_step(dt)
                if self._ramp == self.sp["p_w"]:
                    self._set(ONLINE, "ramp done")
            elif in_state >= self.cfg["recover_s"] * 1000:
                self._set(ONLINE, "no cloud setpoint to ramp to")

    def _ramp_step(self, dt):
        # move toward the cloud setpoint at ramp_w_s, integer W with the remainder carried
        if dt <= 0:
            return
        if dt > 1000:
            dt = 1000
        inc = self.cfg["ramp_w_s"] * dt + self._ramp_carry  # <= 1e9 < 2**30
        step = inc // 1000
        self._ramp_carry = inc - step * 1000
        tgt = self.sp["p_w"]
        r = self._ramp
        if r < tgt:
            r = min(tgt, r + step)
        else:
            r = max(tgt, r - step)
        self._ramp = r

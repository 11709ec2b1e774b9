"""The compute/forecast message (contracts: {seq, ts, exp, t0, step_s, load_w[], measured_w,
source}, signed like every command) and the MQTT side: publish it, read the gateway's retained
headroom."""
import json
import threading
import time

import paho.mqtt.client as mqtt

from edgegw.broker import parse_broker  # noqa: F401 (re-exported: callers use pub.parse_broker)
from edgegw.broker import first_message, start as broker_start

from protocols import topics

MAX_STEPS = topics.MAX_FC_STEPS   # 288: the points the gateway keeps (dispatch.MAX_FC)
MIN_STEP_S = 60          # and takes steps of 60..3600 s (dispatch.set_forecast)
MAX_STEP_S = 3600


def topic(device_id, leaf):
    return topics.topic(device_id, leaf)


def build(seq, ts, exp, t0, step_s, load_w, measured_w, source, site=None):
    """The forecast payload; ValueError naming the field when a value is out of range.
    site: optional {"pv_w": [...], "aux_w": [...]} on the same steps (siteforecast.py)."""
    for k, v in (("seq", seq), ("ts", ts), ("exp", exp), ("t0", t0), ("step_s", step_s),
                 ("measured_w", measured_w)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError("%s: %r is not an int >= 0" % (k, v))
    if not MIN_STEP_S <= step_s <= MAX_STEP_S:
        raise ValueError("step_s: %d not in %d..%d" % (step_s, MIN_STEP_S, MAX_STEP_S))
    if exp <= ts:
        raise ValueError("exp: %d not after ts %d" % (exp, ts))
    if not isinstance(load_w, list) or not 1 <= len(load_w) <= MAX_STEPS:
        raise ValueError("load_w: need a list of 1..%d W values" % MAX_STEPS)
    for i, w in enumerate(load_w):
        if not isinstance(w, int) or isinstance(w, bool) or w < 0:
            raise ValueError("load_w[%d]: %r is not an int >= 0" % (i, w))
    m = {"seq": seq, "ts": ts, "exp": exp, "t0": t0, "step_s": step_s, "load_w": load_w,
         "measured_w": measured_w, "source": str(source)}
    for k, v in (site or {}).items():
        if k not in ("pv_w", "aux_w") or not isinstance(v, list) or not v:
            raise ValueError("%s: not a site forecast field with W values" % k)
        m[k] = v[:len(load_w)]
    errs = topics.check_forecast(m)   # the gateway's own check: what it would refuse
    if errs:
        raise ValueError(errs[0])
    return m


KIND = topics.COMMANDS[topics.FORECAST]   # "forecast": the kind the signature binds


def sign(msg, key, device_id, kind=KIND):
    """msg plus "sig": HMAC-SHA256 over firmware/edgefw/auth.py's canonical form, which binds
    the device id and the kind so a forecast cannot be replayed to another gateway or topic.
    key: bytes, or the config's hex text."""
    from edgefw import auth
    if isinstance(key, str):
        key = auth.parse_key(key.strip())
    return auth.sign(key, device_id, kind, dict(msg))


class Publisher:
    """Connected paho client; `send(device_id, msg)` publishes a forecast with QoS 1."""

    def __init__(self, broker, client_id=None, timeout_s=5):
        self.host, self.port = parse_broker(broker)
        self.timeout_s = timeout_s
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "")
        self._up = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p=None: rc == 0 and self._up.set()
        self.c.on_disconnect = lambda *a: self._up.clear()
        broker_start(self.c, self.host, self.port, keepalive=60)
        if not self._up.wait(timeout_s):
            self.close()
            raise ConnectionError("broker %s:%d: no CONNACK in %d s" % (self.host, self.port, timeout_s))

    def send(self, device_id, msg, retain=False):
        info = self.c.publish(topic(device_id, topics.FORECAST),
                              json.dumps(msg, separators=(",", ":")), qos=1, retain=retain)
        info.wait_for_publish(self.timeout_s)
        if not info.is_published():
            raise ConnectionError("forecast not acknowledged by the broker in %d s" % self.timeout_s)
        return info.mid

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def read_topic(broker, tpc, timeout_s=3):
    """First message on tpc (a retained one arrives at once) as parsed JSON, or None."""
    host, port = parse_broker(broker)
    return first_message(host, port, tpc, 1, timeout_s)


def now_s():
    return int(time.time())


class GatewayClock:
    """Site time as the gateway sees it, from its telemetry "ts": the forecast's t0 must be on
    the gateway's clock (a host clock minutes off, or a virtual gateway running `speed` x real
    time, would shift every step). now() = last ts + elapsed since it arrived x speed, or None
    before the first record."""

    def __init__(self, broker, device_id, speed=1):
        self.speed = speed
        self.last = None          # (ts, monotonic at receipt)
        self.rec = None
        host, port = parse_broker(broker)
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        t = topic(device_id, topics.TELEMETRY)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(t, qos=0)
        self.c.on_message = self._msg
        broker_start(self.c, host, port)

    def _msg(self, c, u, m):
        try:
            d = json.loads(m.payload)
            ts = d["ts"]
        except (ValueError, KeyError, TypeError):
            return
        if isinstance(ts, int):
            self.rec = d
            self.last = (ts, time.monotonic())

    def now(self):
        if self.last is None:
            return None
        ts, t = self.last
        return ts + int((time.monotonic() - t) * self.speed)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()

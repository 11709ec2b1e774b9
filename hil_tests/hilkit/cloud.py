"""The cloud EMS stand-in: a paho client on edgegw/<device>/#, signing commands with the
device key (HMAC-SHA256, the firmware's own auth.sign), collecting what the gateway
sends. Telemetry and events are deduplicated by seq (one counter across reboots) and
every raw arrival is counted, so a test can tell lost from duplicated."""
import json
import os
import threading
import time

import paho.mqtt.client as paho

from edgegw import pairing
from protocols import topics as T

KEY_HEX = "48494c2d62656e63682d6b65792d30303031323334353637383961626364656600"


class Cloud:
    def __init__(self, host, port, device_id, key_hex=KEY_HEX, clock=None):
        self.host, self.port = host, port
        self.device = device_id
        self.key = bytes.fromhex(key_hex)
        self.key_hex = key_hex
        self.clock = clock or (lambda: int(time.time()))  # the gateway's site seconds
        self.seq = int(time.time() * 1000)
        self.cv = threading.Condition()
        self.telemetry = {}   # seq -> record (first arrival)
        self.events = {}
        self.raw = {}         # (leaf, seq) -> arrivals
        self.acks = []
        self.status_msgs = []
        self.connected = threading.Event()
        # a persistent session (QoS 1): what the gateway publishes while this client is
        # reconnecting is queued by the broker, not lost
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2,
                             client_id="hil-cloud-%d-%d" % (os.getpid(), id(self)),
                             clean_session=False)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: self.connected.clear()
        self.c.on_subscribe = lambda *a: self.connected.set()
        self.c.on_message = self._on
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.connect_async(host, port, keepalive=10)
        self.c.loop_start()

    def _on_connect(self, c, u, f, rc, p=None):
        c.subscribe(T.topic(self.device, "#"), 1)

    def wait_ready(self, timeout=10):
        if not self.connected.wait(timeout):
            raise AssertionError("cloud client did not connect to %s:%d" % (self.host, self.port))

    def _on(self, c, u, msg):
        dev, leaf = T.split(msg.topic)
        try:
            d = json.loads(msg.payload)
        except ValueError:
            d = msg.payload
        with self.cv:
            if leaf in (T.TELEMETRY, T.EVENTS) and isinstance(d, dict) and "seq" in d:
                k = (leaf, d["seq"])
                self.raw[k] = self.raw.get(k, 0) + 1
                (self.telemetry if leaf == T.TELEMETRY else self.events).setdefault(d["seq"], d)
            elif leaf == T.ACK:
                self.acks.append(d)
            elif leaf == T.STATUS:
                self.status_msgs.append(d)
            self.cv.notify_all()

    # ---- commands ---------------------------------------------------------------------

    def command(self, leaf, payload, exp_s=3600, sign=True, wait_ack=10.0):
        """Sign (ts/exp in the gateway's site seconds) and publish; returns the ack dict
        (None if none came within wait_ack real seconds)."""
        self.seq += 1
        now = int(self.clock())
        cmd = pairing.command(self.key, self.device, leaf, payload, self.seq, now, exp_s, sign)
        self.c.publish(T.topic(self.device, leaf), json.dumps(cmd, separators=(",", ":")), 1)
        if not wait_ack:
            return None
        ack = pairing.is_ack_of(cmd)
        return self.wait(lambda: next((a for a in self.acks if ack(a)), None), wait_ack,
                         "ack of %s seq %d" % (leaf, cmd["seq"]), fail=False)

    def schedule(self, windows, exp_s=86400, **kw):
        return self.command(T.CMD_SCHEDULE, {"windows": windows}, exp_s, **kw)

    def setpoint(self, p_w, exp_s=600, **kw):
        return self.command(T.CMD_SETPOINT, {"p_w": p_w}, exp_s, **kw)

    # ---- what arrived --------------------------------------------------------------------

    def wait(self, fn, timeout=10.0, what="message", fail=True):
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                r = fn()
                if r:
                    return r
                left = end - time.monotonic()
                if left <= 0:
                    if fail:
                        raise AssertionError("no %s within %.1f s" % (what, timeout))
                    return None
                self.cv.wait(min(left, 0.2))

    def report(self):
        """{received, dup, lost, seqs, raw}: lost = gaps in seq over telemetry and events
        (the link numbers both with one counter; a reboot skips ahead to a new block, so
        gaps at a `boot` change do not count). received/dup count telemetry."""
        with self.cv:
            recs = dict(self.events)
            recs.update(self.telemetry)
            raw = {k[1]: n for k, n in self.raw.items() if k[0] == T.TELEMETRY}
            ntel = len(self.telemetry)
        seqs = sorted(recs)
        lost = 0
        for a, b in zip(seqs, seqs[1:]):
            if recs[a].get("boot") == recs[b].get("boot"):
                lost += b - a - 1
        return {"received": ntel, "dup": sum(n - 1 for n in raw.values()),
                "lost": lost, "seqs": seqs, "raw": raw}

    def all_seqs(self):
        """Telemetry and events share one seq counter: {seq: (leaf, record)}."""
        with self.cv:
            out = {s: (T.TELEMETRY, r) for s, r in self.telemetry.items()}
            out.update({s: (T.EVENTS, r) for s, r in self.events.items()})
            return out

    def close(self):
        self.c.loop_stop()
        try:
            self.c.disconnect()
        except OSError:      # the broker is already gone (a test stopped it)
            pass

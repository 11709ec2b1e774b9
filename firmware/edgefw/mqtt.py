# A small MQTT 3.1.1 client that never blocks the bus loop: poll(now_ms) connects,
# reads and parses whatever bytes arrived, answers and sends keepalive pings, resends
# unacknowledged QoS 1 publishes and reconnects with jittered exponential backoff.
# Runs on MicroPython (unix and ESP32) and CPython. Plain TCP, or TLS when configured
# (edgefw/mqtttls.py; the handshake blocks for up to tls_timeout_ms once per connection).
# The packets themselves are built and taken apart by edgefw/mqttpkt.py; the socket,
# send queue and receive framing are edgefw/mqttconn.py's (this module keeps the session).
import os

from edgefw import mqttpkt as pkt
from edgefw import mqttconn
from edgefw.clock import ticks_add, ticks_diff

# client states
DOWN = 0       # no socket; next attempt when the backoff expires
CONNECTING = 1  # TCP connect in progress
WAIT_CONNACK = 2
UP = 3

_MAX_TX = 32768  # queued bytes beyond which publish() refuses (backpressure)


# TLS verifies the broker's certificate against the CA file (`ca`), always (mqtttls.py).
# No CA file: no connection, unless the caller asked for `insecure`.
NO_CA = ("TLS: no CA file to verify the broker with (link.ca); not connecting. Set "
         "link.ca, or link.insecure true to connect without verifying")


def backoff_ms(attempt, lo_ms, hi_ms, rnd):
    """The wait before connection attempt `attempt` (1, 2, ...): doubling from lo_ms up to
    hi_ms, "equal jitter" (half fixed, half rnd/256 of the rest: rnd is a random byte) so
    a fleet does not reconnect in step. 255 * hi_ms / 2 stays a small int on 32-bit."""
    d = min(lo_ms << min(attempt - 1, 16), hi_ms)
    return d // 2 + (rnd * (d - d // 2)) // 256


class MQTTClient:
    def __init__(self, client_id, host, port=1883, keepalive_s=30, tls=False, ca=None,
                 user=None, password=None, will=None, backoff_min_ms=1000,
                 backoff_max_ms=60000, retry_ms=None, resend=True, max_packet=16384,
                 conn_timeout_ms=10000, tls_timeout_ms=5000, insecure=False):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.ka_ms = keepalive_s * 1000
        self.tls = tls
        self.ca = ca
        self.insecure = insecure  # TLS without verifying the broker (reported by Link)
        self.user = user
        self.password = password
        self.will = will  # (topic, payload, qos, retain) or None
        self.bmin = backoff_min_ms
        self.bmax = backoff_max_ms
        self.retry_ms = self.ka_ms if retry_ms is None else retry_ms
        self.resend = resend
        self.conn_timeout_ms = conn_timeout_ms
        self.tls_timeout_ms = tls_timeout_ms
        # callbacks (None = not interested)
        self.on_message = None     # (topic str, payload bytes, retain bool)
        self.on_connect = None     # ()
        self.on_disconnect = None  # (reason str), only after a CONNACK was received
        self.on_puback = None      # (pid)
        self.subs = []             # [(topic, qos)] subscribed again on every connection
        self.inflight = []         # [[pid, packet, sent_ms]] QoS 1 publishes not acked
        self.state = DOWN
        self.want = True
        self.conn = mqttconn.Conn(max_packet, self._handle)
        self._pid = 0
        self._attempt = 0
        self._next_ms = None  # when to try connecting (None = at once)
        self._t_state = 0
        self._ping_ms = None
        self._now = 0
        # counters for status and benchmarks
        self.connects = 0
        self.fails = 0
        self.last_error = None
        self.tx_msgs = 0

    # ---- public API ---------------------------------------------------------------

    @property
    def connected(self):
        return self.state == UP

    def subscribe(self, topic, qos=1):
        self.subs.append((topic, qos))
        if self.state == UP:
            self._send_subscribe([(topic, qos)])

    def can_publish(self):
        return self.state == UP and len(self.conn.tx) < _MAX_TX

    def publish(self, topic, payload, qos=0, retain=False):
        """Queue a publish; returns the packet id (QoS 1), 0 (QoS 0), or None when not
        connected or the send queue is full."""
        if not self.can_publish():
            return None
        if isinstance(payload, str):
            payload = payload.encode()
        pid = self._new_pid() if qos else 0
        p = pkt.publish(topic, payload, qos, retain, pid)
        if len(p) > self.conn.max_packet:
            raise ValueError("publish of %d bytes exceeds max_packet %d"
                             % (len(p), self.conn.max_packet))
        if qos:
            self.inflight.append([pid, p, self._now])
        self._send(p)
        self.tx_msgs += 1
        return pid

    def disconnect(self):
        """Clean disconnect (the broker discards the will); no reconnect until connect()."""
        if self.state == UP:
            self._send(pkt.DISCONNECT)
        self.want = False
        self._close("disconnect requested", clean=True)

    def connect(self):
        self.want = True
        self._next_ms = None

    def poll(self, now_ms):
        """Do whatever is due without blocking. Returns the state."""
        self._now = now_ms
        try:
            if self.state == DOWN:
                if self.want and (self._next_ms is None or ticks_diff(now_ms, self._next_ms) >= 0):
                    self._start()
            elif self.state == CONNECTING:
                self._poll_connect()
            else:
                err = self.conn.read(now_ms)
                if err:
                    self._fail(err)
                self.conn.flush()
                # DOWN now: the read found the connection gone, nothing more to do
                if self.state == WAIT_CONNACK:
                    if ticks_diff(now_ms, self._t_state) > self.conn_timeout_ms:
                        self._fail("no CONNACK within %d ms" % self.conn_timeout_ms)
                elif self.state == UP:
                    self._keepalive()
        except OSError as e:
            self._fail("socket error %r" % (e,))
        except MemoryError:  # mid-packet the framing is lost with what did not fit: reconnect
            self._fail("out of memory reading a packet (%d B held)" % self.conn.held())
        return self.state

    # ---- connection ---------------------------------------------------------------

    def _start(self):
        if self.tls and not self.ca and not self.insecure:
            self._fail(NO_CA)  # nothing to verify the broker with: no TCP either
            return
        self.conn.open(self.host, self.port)
        self._set(CONNECTING)

    def _set(self, st):
        self.state = st
        self._t_state = self._now

    def _poll_connect(self):
        r = self.conn.connect_result()
        if r == mqttconn.PENDING:
            if ticks_diff(self._now, self._t_state) > self.conn_timeout_ms:
                self._fail("TCP connect timed out")
            return
        if r == mqttconn.REFUSED:
            self._fail("TCP connect refused")
            return
        err = self.conn.start(self._now, self.host, self.tls, self.ca, self.insecure,
                              self.tls_timeout_ms)
        if err:
            self._fail(err)  # closes the plain socket
            return
        self._ping_ms = None
        self._set(WAIT_CONNACK)
        self._send(pkt.connect(self.client_id, self.ka_ms // 1000, self.will, self.user,
                               self.password))
        self.conn.flush()

    def _fail(self, reason):
        self.fails += 1
        self.last_error = reason
        if self.state != UP:
            self.conn.forget_addr()
        self._close(reason)
        self._attempt += 1
        self._next_ms = ticks_add(self._now, backoff_ms(self._attempt, self.bmin, self.bmax,
                                                          os.urandom(1)[0]))

    def _close(self, reason, clean=False):
        was_up = self.state == UP
        self.conn.close(clean)
        self.state = DOWN
        self._t_state = self._now
        if not self.resend:
            self.inflight = []
        if was_up and self.on_disconnect:
            self.on_disconnect(reason)

    # ---- the session's packets ------------------------------------------------------

    def _send(self, p):
        self.conn.send(p, self._now)

    def _handle(self, typ, body):
        kind = typ >> 4
        if kind == 3:  # PUBLISH
            qos = (typ >> 1) & 3
            tl = (body[0] << 8) | body[1]
            topic = body[2:2 + tl].decode()
            j = 2 + tl
            if qos:
                pid = body[j:j + 2]
                j += 2
                self._send(pkt.pub_ack(typ, pid))
            if self.on_message:
                self.on_message(topic, body[j:], bool(typ & 1))
        elif kind == 4:  # PUBACK
            pid = (body[0] << 8) | body[1]
            for k in range(len(self.inflight)):
                if self.inflight[k][0] == pid:
                    self.inflight.pop(k)
                    if self.on_puback:
                        self.on_puback(pid)
                    break
        elif kind == 2:  # CONNACK
            rc = body[1] if len(body) > 1 else 255
            if rc:
                self._fail("broker refused: %s" % (pkt.CONNACK_RC[rc] if rc < 6 else rc))
                return
            self._attempt = 0
            self.connects += 1
            self._set(UP)
            if self.subs:
                self._send_subscribe(self.subs)
            for e in self.inflight:
                self._resend(e)
            if self.on_connect:
                self.on_connect()
        elif kind == 6:  # PUBREL (QoS 2 inbound) -> PUBCOMP
            self._send(pkt.pubcomp(body[:2]))
        # SUBACK (9), UNSUBACK (11), PINGRESP (13): receipt already refreshed last_rx

    def _resend(self, e):
        e[1] = pkt.dup(e[1])  # DUP set: the broker may have had it already
        e[2] = self._now
        self._send(e[1])

    def _send_subscribe(self, subs):
        self._send(pkt.subscribe(self._new_pid(), subs))

    def _new_pid(self):
        while True:
            self._pid = self._pid % 65535 + 1
            for e in self.inflight:
                if e[0] == self._pid:
                    break  # still in flight: the next id
            else:
                return self._pid

    def _keepalive(self):
        now = self._now
        if self.ka_ms <= 0:
            return
        c = self.conn
        if ticks_diff(now, c.last_rx) > self.ka_ms:
            # a ping went unanswered for half a keepalive: the broker or the path is gone
            self._fail("keepalive: nothing from the broker for %d ms" % self.ka_ms)
            return
        if self._ping_ms is None or ticks_diff(now, self._ping_ms) >= self.ka_ms // 2:
            if ticks_diff(now, c.last_tx) >= self.ka_ms or \
                    ticks_diff(now, c.last_rx) >= self.ka_ms // 2:
                self._send(pkt.PINGREQ)
                self._ping_ms = now
        if self.retry_ms:
            for e in self.inflight:
                if ticks_diff(now, e[2]) >= self.retry_ms:
                    self._resend(e)
        c.flush()

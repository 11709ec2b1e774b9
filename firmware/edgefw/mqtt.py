# A small MQTT 3.1.1 client that never blocks the bus loop: poll(now_ms) connects,
# reads and parses whatever bytes arrived, answers and sends keepalive pings, resends
# unacknowledged QoS 1 publishes and reconnects with jittered exponential backoff.
# Runs on MicroPython (unix and ESP32) and CPython. Plain TCP, or TLS when configured
# (the TLS handshake itself blocks for up to tls_timeout_ms once per connection).
import errno
import os
import select

from edgefw.clock import ticks_add, ticks_diff

# client states
DOWN = 0       # no socket; next attempt when the backoff expires
CONNECTING = 1  # TCP connect in progress
WAIT_CONNACK = 2
UP = 3

_EAGAIN = (errno.EAGAIN, errno.EINPROGRESS, getattr(errno, "EWOULDBLOCK", errno.EAGAIN))
_RX_CHUNK = 1024
_MAX_TX = 32768  # queued bytes beyond which publish() refuses (backpressure)

CONNACK_RC = ("accepted", "bad protocol version", "client id rejected", "server unavailable",
              "bad user name or password", "not authorised")


def _blocked(e):
    return e.args and e.args[0] in _EAGAIN or type(e).__name__.startswith("SSLWant")


def _der(data):
    # MicroPython's mbedTLS takes CA data as DER only: decode the first PEM block
    if not data.startswith(b"-----BEGIN"):
        return data
    from binascii import a2b_base64
    lines = data.split(b"\n")
    b64 = b""
    for ln in lines[1:]:
        ln = ln.strip()
        if ln.startswith(b"-----END"):
            break
        b64 += ln
    return a2b_base64(b64)


# TLS verifies the broker's certificate against the CA file (`ca`), always: MicroPython
# has no system certificate store to fall back on. No CA file: no connection, unless the
# caller asked for `insecure` (encrypted, the broker not verified).
NO_CA = ("TLS: no CA file to verify the broker with (link.ca); not connecting. Set "
         "link.ca, or link.insecure true to connect without verifying")
_VERIFY_FAILED = -9984  # mbedTLS MBEDTLS_ERR_X509_CERT_VERIFY_FAILED


def _tls_error(e, ca):
    # mbedTLS raises ValueError("...not correctly signed by the trusted CA") or
    # OSError(-9984); CPython ssl.SSLCertVerificationError
    code = e.args[0] if e.args else None
    text = str(code).strip() if isinstance(code, str) else repr(e)
    if code == _VERIFY_FAILED or type(e).__name__ == "SSLCertVerificationError" \
            or "certificate" in text.lower():
        return "TLS: the broker's certificate was refused (not signed by the CA file %s, " \
               "or not for this host): %s" % (ca, text)
    return "TLS handshake failed: %s" % text


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return bytes((len(s) >> 8, len(s) & 0xFF)) + s


def _packet(first, body):
    n = len(body)
    hdr = bytearray((first,))
    while True:
        b = n & 0x7F
        n >>= 7
        hdr.append(b | 0x80 if n else b)
        if not n:
            break
    return bytes(hdr) + body


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
        self.max_packet = max_packet
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
        self.sock = None
        self._poller = None
        self._addr = None
        self._rx = b""
        self._tx = b""
        self._pid = 0
        self._attempt = 0
        self._next_ms = None  # when to try connecting (None = at once)
        self._t_state = 0
        self._last_rx = 0
        self._last_tx = 0
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
        return self.state == UP and len(self._tx) < _MAX_TX

    def publish(self, topic, payload, qos=0, retain=False):
        """Queue a publish; returns the packet id (QoS 1), 0 (QoS 0), or None when not
        connected or the send queue is full."""
        if not self.can_publish():
            return None
        if isinstance(payload, str):
            payload = payload.encode()
        pid = 0
        body = _str(topic)
        if qos:
            pid = self._new_pid()
            body += bytes((pid >> 8, pid & 0xFF))
        pkt = _packet(0x30 | (qos << 1) | (1 if retain else 0), body + payload)
        if len(pkt) > self.max_packet:
            raise ValueError("publish of %d bytes exceeds max_packet %d"
                             % (len(pkt), self.max_packet))
        if qos:
            self.inflight.append([pid, pkt, self._now])
        self._send(pkt)
        self.tx_msgs += 1
        return pid

    def disconnect(self):
        """Clean disconnect (the broker discards the will); no reconnect until connect()."""
        if self.state == UP:
            self._send(b"\xe0\x00")
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
                self._read()
                self._flush()
                if self.state == DOWN:
                    pass  # the read found the connection gone
                elif self.state == WAIT_CONNACK:
                    if ticks_diff(now_ms, self._t_state) > self.conn_timeout_ms:
                        self._fail("no CONNACK within %d ms" % self.conn_timeout_ms)
                elif self.state == UP:
                    self._keepalive()
        except OSError as e:
            self._fail("socket error %r" % (e,))
        return self.state

    # ---- connection ---------------------------------------------------------------

    def _start(self):
        import socket  # here, not at the top: a link can be built where there is none yet
        self._rx = b""
        self._tx = b""
        if self.tls and not self.ca and not self.insecure:
            self._fail(NO_CA)  # nothing to verify the broker with: no TCP either
            return
        if self._addr is None:
            # DNS blocks on the ESP32; resolved once and again only after a failure
            self._addr = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(self._addr[0], socket.SOCK_STREAM)
        self.sock = s
        s.setblocking(False)
        try:
            s.connect(self._addr[-1])
        except OSError as e:
            if not _blocked(e):
                raise
        self._poller = select.poll()
        self._poller.register(s, select.POLLOUT)
        self._set(CONNECTING)

    def _set(self, st):
        self.state = st
        self._t_state = self._now

    def _poll_connect(self):
        ev = self._poller.poll(0)
        if not ev:
            if ticks_diff(self._now, self._t_state) > self.conn_timeout_ms:
                self._fail("TCP connect timed out")
            return
        flags = ev[0][1]
        if flags & (select.POLLERR | select.POLLHUP):
            self._fail("TCP connect refused")
            return
        if self.tls:
            err = self._wrap_tls()
            if err:
                self._fail(err)
                return
        self._poller = select.poll()
        self._poller.register(self.sock, select.POLLIN)
        self._last_rx = self._last_tx = self._now
        self._ping_ms = None
        self._set(WAIT_CONNACK)
        self._send(self._connect_packet())
        self._flush()

    def _wrap_tls(self):
        """Wrap the connected socket (blocking handshake); None, or what went wrong."""
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.insecure:
            if hasattr(ctx, "check_hostname"):
                ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            if not self.ca:
                return NO_CA
            ctx.verify_mode = ssl.CERT_REQUIRED
            try:
                with open(self.ca, "rb") as f:
                    data = f.read()
            except OSError as e:
                return "TLS setup: CA file %s cannot be read (%r)" % (self.ca, e)
            try:
                ctx.load_verify_locations(cadata=_der(data))
            except Exception as e:  # not a certificate (mbedTLS: ValueError, CPython: SSLError)
                return "TLS setup: CA file %s is not a certificate (%s)" % (
                    self.ca, str(e).strip() or repr(e))
        self.sock.settimeout(self.tls_timeout_ms / 1000)
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=self.host)
        except (OSError, ValueError) as e:  # refused certificate, handshake timeout
            return _tls_error(e, self.ca)
        self.sock.setblocking(False)
        return None

    def _connect_packet(self):
        flags = 0x02  # clean session: the gateway's own ring carries what must survive
        pl = _str(self.client_id)
        if self.will:
            wt, wp, wq, wr = self.will
            flags |= 0x04 | (wq << 3) | (0x20 if wr else 0)
            pl += _str(wt) + _str(wp)
        if self.user is not None:
            flags |= 0x80
            pl += _str(self.user)
            if self.password is not None:
                flags |= 0x40
                pl += _str(self.password)
        ka = self.ka_ms // 1000
        return _packet(0x10, b"\x00\x04MQTT\x04" + bytes((flags, ka >> 8, ka & 0xFF)) + pl)

    def _fail(self, reason):
        self.fails += 1
        self.last_error = reason
        if self.state != UP:
            self._addr = None  # maybe the address changed
        self._close(reason)
        self._attempt += 1
        d = self.bmin << min(self._attempt - 1, 16)
        if d > self.bmax:
            d = self.bmax
        r = os.urandom(2)
        # "equal jitter": half fixed, half random, so a fleet does not reconnect in step
        d = d // 2 + ((r[0] << 8 | r[1]) * (d - d // 2)) // 65536
        self._next_ms = ticks_add(self._now, d)

    def _close(self, reason, clean=False):
        was_up = self.state == UP
        if self.sock is not None:
            if clean:
                try:
                    self._flush()
                except OSError:
                    pass
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self._poller = None
        self.state = DOWN
        self._t_state = self._now
        if not self.resend:
            self.inflight = []
        if was_up and self.on_disconnect:
            self.on_disconnect(reason)

    # ---- I/O ------------------------------------------------------------------------

    def _send(self, pkt):
        self._tx += pkt
        self._last_tx = self._now

    def _flush(self):
        while self._tx and self.sock is not None:
            try:
                if hasattr(self.sock, "send"):
                    n = self.sock.send(self._tx)
                else:
                    n = self.sock.write(self._tx)
            except OSError as e:
                if _blocked(e):
                    return
                raise
            if not n:
                return
            self._tx = self._tx[n:]

    def _read(self):
        for _ in range(8):  # bounded work per poll
            try:
                if hasattr(self.sock, "recv"):
                    data = self.sock.recv(_RX_CHUNK)
                else:
                    data = self.sock.read(_RX_CHUNK)
            except OSError as e:
                if _blocked(e):
                    return
                raise
            if data is None:
                return
            if not data:
                self._fail("connection closed by broker")
                return
            self._last_rx = self._now
            self._rx += data
            self._parse()
            if self.sock is None or len(data) < _RX_CHUNK:
                return

    def _parse(self):
        rx = self._rx
        while len(rx) >= 2:
            n = 0
            shift = 0
            i = 1
            while True:
                if i >= len(rx):
                    self._rx = rx
                    return
                b = rx[i]
                n |= (b & 0x7F) << shift
                i += 1
                if not b & 0x80:
                    break
                shift += 7
                if i > 4:
                    self._fail("bad remaining length")
                    return
            if n > self.max_packet:
                self._fail("packet of %d bytes exceeds max_packet" % n)
                return
            if len(rx) < i + n:
                break
            typ = rx[0]
            body = rx[i:i + n]
            rx = rx[i + n:]
            self._rx = rx
            self._handle(typ, body)
            if self.sock is None:
                return
        self._rx = rx

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
                self._send((b"\x40\x02" if qos == 1 else b"\x50\x02") + pid)
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
                self._fail("broker refused: %s" % (CONNACK_RC[rc] if rc < 6 else rc))
                return
            self._attempt = 0
            self.connects += 1
            self._set(UP)
            if self.subs:
                self._send_subscribe(self.subs)
            for e in self.inflight:  # resend with DUP set
                p = e[1]
                e[1] = bytes((p[0] | 0x08,)) + p[1:]
                e[2] = self._now
                self._send(e[1])
            if self.on_connect:
                self.on_connect()
        elif kind == 6:  # PUBREL (QoS 2 inbound) -> PUBCOMP
            self._send(b"\x70\x02" + body[:2])
        # SUBACK (9), UNSUBACK (11), PINGRESP (13): receipt already refreshed _last_rx

    def _send_subscribe(self, subs):
        pid = self._new_pid()
        body = bytes((pid >> 8, pid & 0xFF))
        for t, q in subs:
            body += _str(t) + bytes((q,))
        self._send(_packet(0x82, body))

    def _new_pid(self):
        while True:
            self._pid = self._pid % 65535 + 1
            busy = False
            for e in self.inflight:
                if e[0] == self._pid:
                    busy = True
                    break
            if not busy:
                return self._pid

    def _keepalive(self):
        now = self._now
        if self.ka_ms <= 0:
            return
        if ticks_diff(now, self._last_rx) > self.ka_ms:
            # a ping went unanswered for half a keepalive: the broker or the path is gone
            self._fail("keepalive: nothing from the broker for %d ms" % self.ka_ms)
            return
        if self._ping_ms is None or ticks_diff(now, self._ping_ms) >= self.ka_ms // 2:
            if ticks_diff(now, self._last_tx) >= self.ka_ms or \
                    ticks_diff(now, self._last_rx) >= self.ka_ms // 2:
                self._send(b"\xc0\x00")
                self._ping_ms = now
        if self.retry_ms:
            for e in self.inflight:
                if ticks_diff(now, e[2]) >= self.retry_ms:
                    p = e[1]
                    e[1] = bytes((p[0] | 0x08,)) + p[1:]
                    e[2] = now
                    self._send(e[1])
        self._flush()

# The byte stream under the MQTT client (edgefw/mqtt.py): one non-blocking TCP socket
# (TLS-wrapped when configured, edgefw/mqtttls.py, imported only then), its poller, the
# send queue and the receive framing: bytes in, whole packets (type byte, body) out to
# the session's handler. Knows nothing of the session (CONNACK, packet ids, keepalive).
import errno
import select

from edgefw import mqttpkt as pkt

_EAGAIN = (errno.EAGAIN, errno.EINPROGRESS, getattr(errno, "EWOULDBLOCK", errno.EAGAIN))
_RX_CHUNK = 1024

# connect_result()
PENDING = 0
READY = 1
REFUSED = -1


def _blocked(e):
    return e.args and e.args[0] in _EAGAIN or type(e).__name__.startswith("SSLWant")


class Conn:
    def __init__(self, max_packet, on_packet):
        self.max_packet = max_packet
        self.on_packet = on_packet  # (type byte, body): set once, no bound method per read
        self.sock = None
        self._poller = None
        self._addr = None
        self.rx = b""
        # a packet longer than one read: its body, allocated once at its header and read
        # into in place (growing rx by concatenation left a trail of ever larger copies
        # that a fragmented heap could not place: an OTA offer is ~7.7 KB)
        self.big = None
        self.big_typ = 0
        self.big_have = 0
        self.tx = b""               # queued bytes not yet taken by the socket
        self.last_rx = 0            # ms of the last bytes received / queued
        self.last_tx = 0

    def open(self, host, port):
        """Start a TCP connect without waiting; connect_result() says when it is done."""
        import socket  # here, not at the top: a link can be built where there is none yet
        self.rx = b""
        self.big = None
        self.tx = b""
        if self._addr is None:
            # DNS blocks on the ESP32; resolved once and again only after a failure
            self._addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(self._addr[0], socket.SOCK_STREAM)
        self.sock = s
        s.setblocking(False)
        try:
            s.connect(self._addr[-1])
        except OSError as e:
            if not _blocked(e):
                raise
        self._watch(select.POLLOUT)

    def forget_addr(self):
        self._addr = None  # resolved again on the next open (maybe the address changed)

    def _watch(self, ev):
        self._poller = select.poll()
        self._poller.register(self.sock, ev)

    def connect_result(self):
        ev = self._poller.poll(0)
        if not ev:
            return PENDING
        return REFUSED if ev[0][1] & (select.POLLERR | select.POLLHUP) else READY

    def start(self, now, host, tls, ca, insecure, tls_timeout_ms):
        """TCP is up: wrap it in TLS if asked (blocks up to tls_timeout_ms), then wait for
        input. Returns an error text (the caller fails the connection) or None."""
        if tls:
            from edgefw import mqtttls  # only for TLS: a plain TCP link never loads it
            s, err = mqtttls.wrap(self.sock, host, ca, insecure, tls_timeout_ms)
            if err:
                return err
            self.sock = s
        self._watch(select.POLLIN)
        self.last_rx = self.last_tx = now
        return None

    def close(self, flush=False):
        if self.sock is not None:
            if flush:
                try:
                    self.flush()
                except OSError:
                    pass
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self._poller = None
        self.rx = b""
        self.big = None  # a half-read packet is gone with its connection

    def send(self, p, now):
        self.tx += p
        self.last_tx = now

    def flush(self):
        while self.tx and self.sock is not None:
            try:
                if hasattr(self.sock, "send"):
                    n = self.sock.send(self.tx)
                else:
                    n = self.sock.write(self.tx)
            except OSError as e:
                if _blocked(e):
                    return
                raise
            if not n:
                return
            self.tx = self.tx[n:]

    def read(self, now):
        """Take what arrived and hand each whole packet to on_packet. Returns why the
        connection is unusable (the caller fails it), or None."""
        for _ in range(8):  # bounded work per poll
            big = self.big
            try:
                if big is not None:
                    want = len(big) - self.big_have
                    got = self._recv_into(memoryview(big)[self.big_have:])
                elif hasattr(self.sock, "recv"):
                    got = self.sock.recv(_RX_CHUNK)
                else:
                    got = self.sock.read(_RX_CHUNK)
            except OSError as e:
                if _blocked(e):
                    return None
                raise
            if got is None:
                return None
            if not got:
                return "connection closed by broker"
            self.last_rx = now
            if big is not None:
                self.big_have += got
                if self.big_have < len(big):
                    if got < want:
                        return None  # the socket is drained
                    continue
                self.big = None
                self.on_packet(self.big_typ, big)
                if self.sock is None:
                    return None
                continue
            self.rx += got
            err = self._parse()
            if err or self.sock is None or (self.big is None and len(got) < _RX_CHUNK):
                return err
        return None

    def held(self):
        """Bytes of packets not yet whole."""
        return len(self.rx) + (len(self.big) if self.big is not None else 0)

    def _recv_into(self, mv):
        s = self.sock
        return s.recv_into(mv) if hasattr(s, "recv_into") else s.readinto(mv)

    def _parse(self):
        rx = self.rx
        while len(rx) >= 2:
            i, n = pkt.header(rx)
            if i == pkt.INCOMPLETE:
                self.rx = rx
                return None
            if i == pkt.BAD_LENGTH:
                return "bad remaining length"
            if n > self.max_packet:
                return "packet of %d bytes exceeds max_packet" % n
            if len(rx) < i + n:
                if n > _RX_CHUNK:
                    big = bytearray(n)
                    have = len(rx) - i
                    big[0:have] = memoryview(rx)[i:]
                    self.big, self.big_typ, self.big_have = big, rx[0], have
                    self.rx = b""
                    return None
                break
            typ = rx[0]
            body = rx[i:i + n]
            rx = rx[i + n:]
            self.rx = rx
            self.on_packet(typ, body)
            if self.sock is None:  # the session closed it (e.g. CONNACK refused)
                return None
        self.rx = rx
        return None

# MQTT 3.1.1 packets as bytes, for edgefw/mqtt.py: pure functions, no socket, no state.
# Encoding builds whole packets (fixed header + remaining length + body); decoding reads
# the fixed header of a receive buffer and the parts of an inbound PUBLISH.
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"

CONNACK_RC = ("accepted", "bad protocol version", "client id rejected", "server unavailable",
              "bad user name or password", "not authorised")

# header(): the remaining length needs more bytes / has more than 4 of them
INCOMPLETE = -1
BAD_LENGTH = -2


def mqstr(s):
    """A length-prefixed MQTT string (text or bytes)."""
    if isinstance(s, str):
        s = s.encode()
    return bytes((len(s) >> 8, len(s) & 0xFF)) + s


def packet(first, body):
    """First byte (type and flags), the remaining length, then the body."""
    n = len(body)
    hdr = bytearray((first,))
    while True:
        b = n & 0x7F
        n >>= 7
        hdr.append(b | 0x80 if n else b)
        if not n:
            break
    return bytes(hdr) + body


def connect(client_id, keepalive_s, will, user, password):
    """CONNECT, clean session: the gateway's own ring carries what must survive.
    will: (topic, payload, qos, retain) or None."""
    flags = 0x02
    pl = mqstr(client_id)
    if will:
        wt, wp, wq, wr = will
        flags |= 0x04 | (wq << 3) | (0x20 if wr else 0)
        pl += mqstr(wt) + mqstr(wp)
    if user is not None:
        flags |= 0x80
        pl += mqstr(user)
        if password is not None:
            flags |= 0x40
            pl += mqstr(password)
    ka = keepalive_s
    return packet(0x10, b"\x00\x04MQTT\x04" + bytes((flags, ka >> 8, ka & 0xFF)) + pl)


def publish(topic, payload, qos, retain, pid):
    """PUBLISH; pid is sent only with qos 1 or 2."""
    body = mqstr(topic)
    if qos:
        body += bytes((pid >> 8, pid & 0xFF))
    return packet(0x30 | (qos << 1) | (1 if retain else 0), body + payload)


def dup(pkt):
    """The same PUBLISH with the DUP flag set (a resend)."""
    return bytes((pkt[0] | 0x08,)) + pkt[1:]


def subscribe(pid, subs):
    """SUBSCRIBE to [(topic, qos)]."""
    body = bytes((pid >> 8, pid & 0xFF))
    for t, q in subs:
        body += mqstr(t) + bytes((q,))
    return packet(0x82, body)


def header(rx):
    """The fixed header at the start of rx: (its length 2..5, the remaining length), or
    (INCOMPLETE, 0) when more bytes are needed, (BAD_LENGTH, 0) past 4 length bytes."""
    n = 0
    shift = 0
    i = 1
    while True:
        if i >= len(rx):
            return INCOMPLETE, 0
        b = rx[i]
        n |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return i, n
        shift += 7
        if i > 4:
            return BAD_LENGTH, 0


def pub_ack(typ, pid):
    """The answer to an inbound PUBLISH of QoS 1 (PUBACK) or 2 (PUBREC); pid: 2 bytes."""
    return (b"\x40\x02" if (typ >> 1) & 3 == 1 else b"\x50\x02") + pid


def pubcomp(pid):
    """The answer to a PUBREL (QoS 2 inbound); pid: 2 bytes."""
    return b"\x70\x02" + pid

"""The one parser for a broker address given on a command line ('HOST' or 'HOST:PORT').

Every command and the HIL plug-in use it, so a missing port means the same everywhere: the
MQTT default 1883. Errors are ValueError with a one-line message naming the option; callers
turn it into their own error type (UserError, DutError)."""

DEFAULT_PORT = 1883


def parse_broker(text, option="--broker"):
    """'host:port' or 'host' -> (host, port); ValueError('<option> <text>: why') when bad."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("%s %r: expected HOST or HOST:PORT" % (option, text))
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        return port, DEFAULT_PORT
    if not host:
        raise ValueError("%s %r: the host is missing (HOST or HOST:PORT)" % (option, text))
    try:
        p = int(port)
    except ValueError:
        raise ValueError("%s %r: port %r is not a number" % (option, text, port)) from None
    if not 0 < p < 65536:
        raise ValueError("%s %r: port %d out of range 1..65535" % (option, text, p))
    return host, p


def start(client, host, port, keepalive=30):
    """Connect a paho client and start its network thread; ConnectionError('broker H:P:
    why') when the broker cannot be reached (callers add the option or wrap it)."""
    try:
        client.connect(host, port, keepalive=keepalive)
    except OSError as e:
        raise ConnectionError("broker %s:%d: %s" % (host, port, e)) from None
    client.loop_start()


def first_message(host, port, topic, qos, timeout_s, accept=None):
    """The first JSON message on topic (a retained one arrives at once) that accept() takes,
    or None after timeout_s; payloads that are not JSON are skipped. ConnectionError when
    the broker cannot be reached (from start)."""
    import json
    import threading
    import paho.mqtt.client as paho
    got = []
    ev = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)

    def on_connect(cl, u, f, rc, p=None):
        cl.subscribe(topic, qos=qos)

    def on_message(cl, u, m):
        try:
            d = json.loads(m.payload)
        except ValueError:
            return
        if accept is None or accept(d):
            got.append(d)
            ev.set()
    c.on_connect = on_connect
    c.on_message = on_message
    start(c, host, port)
    try:
        ev.wait(timeout_s)
    finally:
        c.loop_stop()
        c.disconnect()
    return got[0] if got else None

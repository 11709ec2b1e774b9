"""The northbound link against a real mosquitto: the firmware MQTT client and Link run
under MicroPython as real processes (tests/host/link_driver.py), paho plays the cloud."""
import json
import os
import queue
import subprocess
import sys
import threading
import time

import paho.mqtt.client as paho
import pytest

from conftest import MICROPYTHON, MICROPYPATH, REPO

sys.path.insert(0, os.path.join(REPO, "host"))
from edgegw.mosq import Mosquitto  # noqa: E402

DRIVER = os.path.join(REPO, "tests", "host", "link_driver.py")


class Driver:
    """A link_driver.py process; lines of JSON from its stdout land in a queue."""

    def __init__(self, *args):
        env = dict(os.environ, MICROPYPATH=MICROPYPATH)
        self.p = subprocess.Popen([MICROPYTHON, "-X", "heapsize=2m", DRIVER] + list(args),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env, cwd=REPO)
        self.q = queue.Queue()
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for ln in self.p.stdout:
            try:
                d = json.loads(ln)
            except ValueError:
                d = {"ev": "text", "text": ln.rstrip()}
            d["_t"] = time.monotonic()
            self.lines.append(d)
            self.q.put(d)

    def send(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def wait(self, pred, timeout=10.0, what="event"):
        t_end = time.monotonic() + timeout
        while True:
            left = t_end - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s within %.1f s; driver said: %s"
                                     % (what, timeout, self.lines[-15:]))
            try:
                d = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if pred(d):
                return d

    def quit(self):
        self.send("quit")
        d = self.wait(lambda d: d["ev"] == "bye", what="bye")
        self.p.wait(5)
        return d

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


class Cloud:
    """paho client subscribed to a topic filter; messages collected in order."""

    def __init__(self, broker, filt):
        self.msgs = []
        self.cv = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="cloud-%d" % id(self))
        self.c.on_message = self._on
        self.ready = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: (c.subscribe(filt, 1), None)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.broker = broker
        self.c.reconnect_delay_set(0.05, 0.5)
        self.connect()
        self.c.loop_start()

    def connect(self):
        self.ready.clear()
        self.c.connect(self.broker.host, self.broker.port, keepalive=10)

    def wait_ready(self, timeout=5):
        assert self.ready.wait(timeout), "cloud client did not subscribe"

    def _on(self, c, u, msg):
        with self.cv:
            self.msgs.append((msg.topic, msg.payload))
            self.cv.notify_all()

    def wait(self, pred, timeout=10.0, what="message"):
        t_end = time.monotonic() + timeout
        with self.cv:
            i = 0
            while True:
                while i < len(self.msgs):
                    if pred(*self.msgs[i]):
                        return self.msgs[i]
                    i += 1
                left = t_end - time.monotonic()
                if left <= 0:
                    raise AssertionError("no %s within %.1f s; got %s"
                                         % (what, timeout, self.msgs[-10:]))
                self.cv.wait(left)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def broker():
    with Mosquitto() as m:
        yield m


def test_mqtt_client_publish_subscribe_reconnect(broker):
    cloud = Cloud(broker, "drv/#")
    cloud.wait_ready()
    drv = Driver("mqtt", broker.host, str(broker.port), "2", "50")
    try:
        drv.wait(lambda d: d["ev"] == "connected", what="connect")
        done = drv.wait(lambda d: d["ev"] == "done", what="all acked")
        assert done["acked"] == 50
        cloud.c.publish("drv/in", b"hello", 1)
        cloud.wait(lambda t, p: t == "drv/echo" and p == b"hello", what="echo")
        outs = [int(p) for t, p in cloud.msgs if t == "drv/out"]
        assert outs == list(range(50))
        # idle for 2 keepalives: pings keep the connection up
        time.sleep(4.2)
        assert not [d for d in drv.lines if d["ev"] == "disconnected"]
        broker.stop()
        drv.wait(lambda d: d["ev"] == "disconnected", timeout=3, what="disconnect")
        broker.start()
        drv.wait(lambda d: d["ev"] == "connected", timeout=5, what="reconnect")
        cloud.wait_ready()
        cloud.c.publish("drv/in", b"again", 1)
        cloud.wait(lambda t, p: t == "drv/echo" and p == b"again", what="echo after restart")
        # an unclean loss publishes the retained will
        cloud2 = Cloud(broker, "drv/status")
        cloud2.wait_ready()
        drv.kill()
        cloud2.wait(lambda t, p: p == b"offline", what="last will")
        cloud2.close()
    finally:
        drv.kill()
        cloud.close()

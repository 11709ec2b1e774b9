"""A real mosquitto broker for tests and benches: a free loopback port, a temporary
config, stop()/start() on the same port for broker-loss tests.

    with Mosquitto() as m:
        ... connect to m.host, m.port ...
        m.stop()    # SIGKILL: clients see the TCP connection die, like a crashed broker
        m.start()   # same port again
        m.pause()   # SIGSTOP: a hung broker, sockets stay open; m.resume()
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

MOSQUITTO = os.environ.get("EDGEGW_MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Mosquitto:
    def __init__(self, port=None, extra_conf="", verbose=False):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.verbose = verbose
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix="edgegw-mosq-")
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.log = os.path.join(self.dir, "mosquitto.log")
        with open(self.conf, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "log_dest stderr\n%s\n" % (self.port, extra_conf))

    def start(self, timeout_s=5.0):
        if not os.path.exists(MOSQUITTO):
            raise RuntimeError("mosquitto not found at %s (make setup installs it)" % MOSQUITTO)
        logf = open(self.log, "ab")
        args = [MOSQUITTO, "-c", self.conf] + (["-v"] if self.verbose else [])
        self.proc = subprocess.Popen(args, stdout=logf, stderr=logf)
        logf.close()
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError("mosquitto exited with %s: %s"
                                   % (self.proc.returncode, self.read_log()[-500:]))
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("mosquitto did not listen on port %d within %.1f s"
                           % (self.port, timeout_s))

    def stop(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case it was paused
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self):
        """SIGSTOP: the broker hangs with its sockets open (a half-open path: only the
        clients' keepalive can notice)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def read_log(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        return False

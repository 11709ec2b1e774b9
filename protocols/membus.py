# An in-memory Modbus RTU bus for tests and the memory probe (not used by the gateway
# itself): what the master writes is decoded as a request and the addressed slave's
# answer(request) -> response bytes becomes readable, on every runtime (CPython, both
# MicroPythons). One fake for tests/dual, tests/host and host/edgegw/memprobe.py.
from protocols import modbus_rtu as rtu


class MemBus:
    """A byte-stream bus with slaves behind it (objects with .slave and .answer(req)).
    broken = True: the stream raises as a TCP RS-485 gateway that went away does.
    pollable: .stream is the bus itself (the app may poll it); else None (polled on its
    timer)."""

    def __init__(self, slaves, pollable=False):
        self.slaves = {}
        for s in slaves:
            self.slaves[s.slave] = s
        self.rx = bytearray()
        self.broken = False
        self.stream = self if pollable else None

    def write(self, frame):
        if self.broken:
            raise OSError(104, "mem bus closed by peer")
        req = rtu.decode_request(bytes(frame))
        s = self.slaves.get(req.slave)
        if s is not None:
            self.rx.extend(s.answer(req))
        return len(frame)

    def readinto(self, buf):
        if self.broken:
            raise OSError(104, "mem bus closed by peer")
        n = min(len(buf), len(self.rx))
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n

    def close(self):
        pass

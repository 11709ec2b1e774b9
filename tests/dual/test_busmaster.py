# Bus master state machine against in-process slaves answering real RTU frames.
from protocols import modbus_rtu as rtu
from edgefw import clock
from edgefw.busmaster import BusMaster
from protocols.membus import MemBus as LoopBus


class Slave:
    def __init__(self, slave, regs):
        self.slave = slave
        self.regs = regs          # addr -> u16 (FC3/4 share them here)
        self.mode = "ok"          # ok | silent | crc | exc
        self.got = []             # requests received

    def answer(self, req):
        self.got.append(req)
        if self.mode == "silent":
            return b""
        if self.mode == "exc":
            return rtu.encode_exception(self.slave, req.fc, 2)
        if req.fc in (3, 4):
            f = rtu.encode_response(self.slave, req.fc,
                                    [self.regs.get(req.addr + i, 0) for i in range(req.qty)])
        elif req.fc == 6:
            self.regs[req.addr] = req.values[0]
            f = rtu.encode_response(self.slave, 6, addr=req.addr, qty=req.values[0])
        elif req.fc == 16:
            for i in range(req.qty):
                self.regs[req.addr + i] = req.values[i]
            f = rtu.encode_response(self.slave, 16, addr=req.addr, qty=req.qty)
        else:
            return rtu.encode_exception(self.slave, req.fc, 1)
        if self.mode == "crc":
            f = f[:-1] + bytes(((f[-1] ^ 0x55),))
        return f


class Dev:
    def __init__(self, name, slave, reads, period_ms=20):
        self.name = name
        self.slave = slave
        self.reads = reads
        self.period_ms = period_ms
        self.data = {}
        self.polls = 0

    def on_read(self, fc, addr, values, now):
        for i in range(len(values)):
            self.data[addr + i] = values[i]

    def on_poll(self, ok, now):
        self.polls += 1


def _run(bm, until, max_ms=3000):
    t0 = clock.ticks_ms()
    while not until():
        w = bm.poll()
        if clock.ticks_diff(clock.ticks_ms(), t0) > max_ms:
            raise AssertionError("condition not reached in %d ms" % max_ms)
        if w:
            clock.sleep_ms(1)


def _setup(stale_polls=3):
    a = Slave(1, {0: 11, 1: 12, 10: 99})
    b = Slave(2, {0: 21, 1: 22})
    bus = LoopBus([a, b])
    bm = BusMaster(bus, "t", baud=115200, timeout_ms=15, retries=1, stale_polls=stale_polls)
    da = Dev("a", 1, [(3, 0, 2), (4, 10, 1)])
    db = Dev("b", 2, [(3, 0, 2)])
    bm.add(da)
    bm.add(db)
    return a, b, bm, da, db


def test_polls_every_device_and_decodes():
    a, b, bm, da, db = _setup()
    _run(bm, lambda: da.polls >= 3 and db.polls >= 3)
    assert da.data == {0: 11, 1: 12, 10: 99}
    assert db.data == {0: 21, 1: 22}
    s = bm.stats()
    assert s["a"]["ok"] == s["a"]["requests"] and s["a"]["timeouts"] == 0
    assert s["a"]["age_ms"] is not None and not s["a"]["stale"]


def test_silent_device_goes_stale_others_continue():
    a, b, bm, da, db = _setup(stale_polls=3)
    b.mode = "silent"
    _run(bm, lambda: bm.stats()["b"]["stale"], 5000)
    s = bm.stats()["b"]
    assert s["missed"] == 3 and s["polls"] == 3
    # retries=1: two attempts per missed poll, then skipped reads are not sent
    assert s["timeouts"] == 6 and s["requests"] == 6
    n = da.polls
    _run(bm, lambda: da.polls >= n + 5)
    # stale: probed with backoff (>= 2 s), so far fewer requests than device a
    assert bm.stats()["b"]["requests"] <= 7
    b.mode = "ok"
    assert not bm.stats()["a"]["stale"]


def test_crc_errors_counted_and_discarded():
    a, b, bm, da, db = _setup()
    a.mode = "crc"
    _run(bm, lambda: bm.stats()["a"]["crc"] >= 4)
    assert da.data == {}  # nothing from a corrupted frame was taken
    a.mode = "ok"
    _run(bm, lambda: da.data.get(10) == 99)
    assert bm.stats()["a"]["timeouts"] == 0


def test_exception_counted_device_alive():
    a, b, bm, da, db = _setup()
    a.mode = "exc"
    _run(bm, lambda: bm.stats()["a"]["exceptions"] >= 4)
    s = bm.stats()["a"]
    assert s["last_exc"] == 2 and not s["stale"] and s["missed"] == 0


def test_writes_go_ahead_of_reads():
    a, b, bm, da, db = _setup()
    _run(bm, lambda: da.polls >= 1)
    done = []
    bm.write(db, 6, 5, [1234], cb=done.append)
    bm.write(db, 6, 5, [4321], cb=done.append)  # replaces the queued one
    bm.write(da, 16, 7, [1, 2])
    n = len(a.got) + len(b.got)
    _run(bm, lambda: bm.pending() == 0)
    assert done == [True]
    assert b.regs[5] == 4321 and a.regs[7] == 1 and a.regs[8] == 2
    # the two writes were the next two frames on the bus (at most one read in flight)
    assert len(a.got) + len(b.got) <= n + 3


def test_write_to_silent_device_gives_up():
    a, b, bm, da, db = _setup()
    b.mode = "silent"
    done = []
    bm.write(db, 6, 5, [1], cb=done.append)
    _run(bm, lambda: done)
    assert done == [False]
    _run(bm, lambda: da.polls >= 2)


class BadSlave(Slave):
    """Answers every request with one of a list of malformed-but-framed replies in turn."""

    def __init__(self, slave, replies):
        Slave.__init__(self, slave, {})
        self.replies = replies
        self.i = 0

    def answer(self, req):
        self.got.append(req)
        f = self.replies[self.i % len(self.replies)](self.slave, req)
        self.i += 1
        return f


def _bad_replies():
    c = rtu.add_crc
    return [
        lambda s, q: c(bytes((s, q.fc | 0x80, 0))),                 # exception code 0
        lambda s, q: c(bytes((s, q.fc, 0))),                        # zero byte count
        lambda s, q: c(bytes((s, q.fc, 3, 1, 2, 3))),               # odd byte count
        lambda s, q: c(bytes((s, q.fc, 2, 0, 7))),                  # one register for two
        lambda s, q: c(bytes((s, 0x47, 1, 2))),                     # unknown function
        lambda s, q: c(bytes((s, 6, 0, 0, 0, 1))),                  # a write echo for a read
        lambda s, q: c(bytes((s,))) + b"\xff" * 40,                 # overlong noise
        lambda s, q: b"\x00",
    ]


def test_misbehaving_device_never_costs_its_neighbour():
    # issue 14.1: "SS 8x 00 CRC" decoded as a normal answer and the bus loop raised
    # TypeError: the bus was marked down and a healthy meter on it went stale
    a = BadSlave(1, _bad_replies())
    b = Slave(2, {0: 21, 1: 22})
    bus = LoopBus([a, b])
    bm = BusMaster(bus, "t", baud=115200, timeout_ms=15, retries=1, stale_polls=5)
    da = Dev("a", 1, [(3, 0, 2)])
    db = Dev("b", 2, [(3, 0, 2)])
    bm.add(da)
    bm.add(db)
    # 5 polls x 2 attempts: every bad shape is tried before a goes stale
    _run(bm, lambda: db.polls >= 12 and bm.stats()["a"]["stale"], 8000)
    assert len(a.got) >= len(a.replies)
    s = bm.stats()
    assert bm.errors == 0
    assert db.data == {0: 21, 1: 22} and not s["b"]["stale"]
    assert s["b"]["ok"] == s["b"]["requests"]
    assert da.data == {} and s["a"]["ok"] == 0 and s["a"]["crc"] + s["a"]["timeouts"] >= 8


class RaisingDev(Dev):
    def on_read(self, fc, addr, values, now):
        raise ValueError("decode failed")


def test_device_decode_error_counted_for_that_device():
    a = Slave(1, {0: 11, 1: 12})
    b = Slave(2, {0: 21, 1: 22})
    bm = BusMaster(LoopBus([a, b]), "t", baud=115200, timeout_ms=15, retries=1)
    da = RaisingDev("a", 1, [(3, 0, 2)])
    db = Dev("b", 2, [(3, 0, 2)])
    bm.add(da)
    bm.add(db)
    _run(bm, lambda: db.polls >= 6 and bm.stats()["a"]["stale"], 8000)
    s = bm.stats()
    assert bm.errors == 0 and s["a"]["bad"] >= 3 and s["a"]["ok"] == 0
    assert not s["b"]["stale"] and db.data == {0: 21, 1: 22}

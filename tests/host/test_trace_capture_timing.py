"""`edgegw trace capture` timing (issue 14.3): on a pty or TCP tap every frame used to be
stamped 0.0 ms latency and some came out of time order; `--baud 9600` on a dotted capture
gave negative latencies. Bytes are now stamped on arrival on one clock: these tests feed a
real pty and a real TCP socket with known gaps on an injected clock (the feeder advances it
only once the capture has read what was written), so the numbers are exact on any host."""
import json
import os
import pty
import socket
import threading
import time
import tty

import pytest
from click.testing import CliRunner

from conftest import REPO
from edgegw.cli import cli
from edgegw import cmd_trace
from protocols import modbus_rtu as rtu
from protocols import trace

SEPLOS = os.path.join(REPO, "tests", "data", "traces", "seplos-v3-SG16S200A-all-frames.txt")


class ListWriter:
    def __init__(self):
        self.recs = []

    def write(self, rec):
        self.recs.append(rec)


def _exchanges():
    """[(t_us, bytes)] a master and two slaves put on the bus: known gaps and latencies."""
    out = []
    t = 10000
    for i in range(12):
        slave = 1 + i % 2
        req = rtu.encode_request(slave, 4, 0x1000, 17)
        rsp = rtu.encode_response(slave, 4, list(range(i, i + 17)))
        lat = 3000 + 1000 * i            # the device's latency grows: 3 .. 14 ms
        out.append((t, req))
        out.append((t + lat, rsp))
        t += lat + 40000
    return out


def _check(recs, ex, baud):
    assert [r["hex"] for r in recs] == [b.hex() for _, b in ex]
    assert [r["dir"] for r in recs] == ["req", "rsp"] * (len(ex) // 2)
    ts = [r["t_us"] for r in recs]
    assert ts == sorted(ts)
    t0 = ex[0][0]
    # stream: a frame's bytes arrive together at the time they were written
    assert [(r["t0_us"], r["t_us"]) for r in recs] == [(t - t0, t - t0) for t, _ in ex]
    dec = cmd_trace.decode_records(recs, cmd_trace.Devices(), baud)
    lats = [e["latency_us"] for e in dec if e["dir"] == "rsp"]
    assert lats == [3000 + 1000 * i for i in range(12)]


class Clock:
    def __init__(self):
        self.us = 0

    def __call__(self):
        return self.us


def _feed(write, cap, clock, ex):
    """Write each chunk at its time: wait until the capture has read the previous one."""
    sent = 0
    for t, b in ex:
        end = time.monotonic() + 20
        while cap.nbytes < sent:
            assert time.monotonic() < end, "capture did not read the bytes"
            time.sleep(0.001)
        clock.us = t
        write(b)
        sent += len(b)
    end = time.monotonic() + 20
    while cap.nbytes < sent and time.monotonic() < end:
        time.sleep(0.001)
    clock.us = ex[-1][0] + 100000     # a silence closes the last frame


def _run_capture(ser, ex, write, baud=9600):
    w = ListWriter()
    clock = Clock()
    cap = cmd_trace.Capture(w, baud, "bus0", paced=False)
    done = threading.Event()
    th = threading.Thread(target=lambda: (_feed(write, cap, clock, ex), done.set()), daemon=True)
    clock.us = ex[0][0]
    th.start()
    # t0 of the capture is its first clock reading: frames are stamped from the first chunk
    cmd_trace.capture(ser, w, baud, clock_us=clock, cap=cap,
                      stop=lambda: done.is_set() and not cap.buf)
    th.join(5)
    return w.recs


def test_capture_from_a_pty_stamps_arrivals():
    import serial
    m, s = pty.openpty()
    tty.setraw(m)
    tty.setraw(s)
    ser = serial.serial_for_url(os.ttyname(s), baudrate=9600, timeout=0)
    ex = _exchanges()
    try:
        recs = _run_capture(ser, ex, lambda b: os.write(m, b))
    finally:
        ser.close()
        os.close(m)
        os.close(s)
    _check(recs, ex, 9600)


def test_capture_from_a_tcp_tap_stamps_arrivals():
    import serial
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    ser = serial.serial_for_url("socket://127.0.0.1:%d" % port, baudrate=9600, timeout=0)
    conn, _ = srv.accept()
    ex = _exchanges()
    try:
        recs = _run_capture(ser, ex, conn.sendall)
    finally:
        ser.close()
        conn.close()
        srv.close()
    _check(recs, ex, 9600)


def test_glued_frames_on_a_stream_keep_order_and_never_go_negative():
    w = ListWriter()
    cap = cmd_trace.Capture(w, 19200)
    req = rtu.encode_request(1, 4, 0x1000, 17)
    rsp = rtu.encode_response(1, 4, list(range(17)))
    req2 = rtu.encode_request(2, 3, 0, 2)
    cap.feed(req + rsp[:10], 5000)        # a fast responder: no silence after the request
    cap.feed(rsp[10:] + req2, 5600)       # and the next request glued to the response
    cap.poll(50000)
    cap.close()
    assert [(r["dir"], r["hex"]) for r in w.recs] == [("req", req.hex()), ("rsp", rsp.hex()),
                                                      ("req", req2.hex())]
    assert [(r["t0_us"], r["t_us"]) for r in w.recs] == [(5000, 5000), (5000, 5600),
                                                         (5600, 5600)]
    dec = cmd_trace.decode_records(w.recs, cmd_trace.Devices(), 19200)
    assert dec[1]["latency_us"] == 0


def test_paced_uart_chunks_time_each_byte():
    # a UART at 9600 baud: a chunk's last byte arrives (n-1) characters after its first
    w = ListWriter()
    cap = cmd_trace.Capture(w, 9600, paced=True)
    ch = rtu.char_us(9600)
    req = rtu.encode_request(1, 3, 0, 2)
    rsp = rtu.encode_response(1, 3, [7, 8])
    cap.feed(req[:4], 1000 + 3 * ch)
    cap.feed(req[4:], 1000 + 7 * ch)
    cap.feed(rsp, 1000 + 7 * ch + 20000 + 8 * ch)
    cap.close()
    assert [(r["t0_us"], r["t_us"]) for r in w.recs] == [
        (1000, 1000 + 7 * ch), (1000 + 7 * ch + 20000, 1000 + 7 * ch + 20000 + 8 * ch)]
    dec = cmd_trace.decode_records(w.recs, cmd_trace.Devices(), 9600)
    assert dec[1]["latency_us"] == 20000


@pytest.mark.parametrize("baud", [None, "9600", "1200", "115200"])
def test_dotted_capture_latency_does_not_depend_on_baud(baud):
    args = ["trace", "decode", SEPLOS, "--json"] + (["--baud", baud] if baud else [])
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    lats = [json.loads(x).get("latency_us") for x in r.output.splitlines()]
    lats = [x for x in lats if x is not None]
    # 22 exchanges; the two FC01 requests for 2304 bits do not decode, so no latency
    assert len(lats) == 20 and set(lats) == {5000}


def test_trace_without_t0_never_reports_negative_latency():
    # an old trace from a stream: the wire-time estimate would start the response before
    # its request ended; the latency is then unknown, not negative
    req = rtu.encode_request(1, 4, 0x1000, 17)
    rsp = rtu.encode_response(1, 4, list(range(17)))
    recs = [{"t_us": 1000, "bus": "b", "dir": "req", "hex": req.hex(), "flags": []},
            {"t_us": 1500, "bus": "b", "dir": "rsp", "hex": rsp.hex(), "flags": []}]
    dec = cmd_trace.decode_records(recs, cmd_trace.Devices(), 9600)
    assert "latency_us" not in dec[1] and dec[1]["values"]
    assert trace.latency_us(recs[0], dict(recs[1], t0_us=1200), 9600) == 200

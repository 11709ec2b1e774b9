# The one clock of the firmware: monotonic ticks (real time, for bus timing) and
# site time (wall clock; runs `speed` x real time in the virtual gateway).
# Same API on MicroPython and CPython; ticks wrap, so always compare with ticks_diff.
import time as _t

try:
    _ticks_ms = _t.ticks_ms
    _ticks_us = _t.ticks_us
    ticks_add = _t.ticks_add
    ticks_diff = _t.ticks_diff
    sleep_ms = _t.sleep_ms
    _MPY = True
except AttributeError:  # CPython
    _MPY = False
    _MASK = 0x3FFFFFFF   # ticks wrap at 2**30 as on MicroPython (the mask is a small int)
    _HALF = 0x20000000

    def _ticks_ms():
        return int(_t.monotonic() * 1000) & _MASK

    def _ticks_us():
        return int(_t.monotonic() * 1000000) & _MASK

    def ticks_add(t, ms):
        return (t + ms) & _MASK

    def ticks_diff(new, old):
        return ((new - old + _HALF) & _MASK) - _HALF

    def sleep_ms(ms):
        if ms > 0:
            _t.sleep(ms / 1000)

ticks_ms = _ticks_ms
ticks_us = _ticks_us

# Site time is kept in seconds since EPOCH = 2025-01-01 00:00 UTC (rel(), a whole number
# of days, so the time of day is unchanged): a small int on a 32-bit port until 2059, where
# unix time (> 2**30) would make every time difference a heap-allocated long int. EPOCH and
# unix time() are long ints on 32-bit: made once here (never a code constant) and used only
# where the wire wants unix seconds (telemetry ts, events, status, signed commands).
_EPOCH_DAYS = 20089           # 1970-01-01 .. 2025-01-01
EPOCH = _EPOCH_DAYS * 86400   # 1735689600
# MicroPython ports with a 2000 epoch (ESP32) report 946684800 s less than unix time;
# their time.time() (s since 2000) is a small int, and so is time() - _SYS_REL
_EPOCH_2000 = _t.gmtime(0)[0] == 2000
_EPOCH_FIX = 946684800 if _EPOCH_2000 else 0
_SYS_REL = 789004800 if _EPOCH_2000 else EPOCH   # system clock at EPOCH

_speed = 1
_epoch = None     # site time (s since EPOCH) at _t0, None = follow the system clock
_t0 = 0           # real ticks at the last re-base
_acc_ms = 0       # site ms accumulated since _epoch (re-based before ticks can wrap)
_site_t = 0       # site ticks (ms, wraps like ticks) at the last call
_last = _ticks_ms()


def configure(speed=1, epoch=None):
    """Run site time `speed` x real time, starting at `epoch` (s) or the system clock."""
    global _speed, _epoch, _t0, _acc_ms, _last
    if not isinstance(speed, int) or speed < 1:
        raise ValueError("clock speed %r must be an int >= 1" % (speed,))
    _speed = speed
    if epoch is not None:
        epoch = epoch - EPOCH    # once per configure: rel() stays in small ints
    elif speed != 1:
        epoch = int(_t.time()) - _SYS_REL
    _epoch = epoch
    _t0 = _ticks_ms()
    _last = _t0
    _acc_ms = 0


def speed():
    return _speed


# Lockstep (the virtual gateway, hal_unix): ticks come from the host's simulated time and
# step(ms) reports a finished pass, returning once the host has moved time on
_step = None


def lockstep(ms_f, us_f, step):
    global _ticks_ms, _ticks_us, ticks_ms, ticks_us, sleep_ms, _step
    _ticks_ms = ticks_ms = ms_f
    _ticks_us = ticks_us = us_f
    sleep_ms = _step = step


def idle(poller, ms):
    """The loop's wait between passes: up to ms, woken early by input on poller (lockstep:
    the host's next step). ms None: the loop has ended (lockstep: site time runs free)."""
    if _step is not None:
        _step(ms)
    elif ms:
        poller.poll(ms)


def _advance():
    # fold elapsed real ms into site ms; called often enough that ticks never wrap past us
    global _last, _acc_ms, _site_t, _epoch
    now = _ticks_ms()
    d = ticks_diff(now, _last)
    if d > 0:
        _last = now
        _acc_ms += d * _speed
        _site_t = ticks_add(_site_t, d * _speed)
        if _epoch is None:
            _acc_ms = 0  # wall time follows the system clock; nothing to carry
        elif _acc_ms > 0x10000000:
            # keep it a small int on 32-bit ports (both values are >= 0 here)
            _epoch += _acc_ms // 1000
            _acc_ms = _acc_ms % 1000
    return _acc_ms


def site_ms():
    """Monotonic site-time ticks in ms (wrap like ticks_ms: compare with ticks_diff)."""
    _advance()
    return _site_t


def rel():
    """Site wall-clock seconds since EPOCH (2025-01-01; int, negative before): what the
    control loop computes with (dispatch, energy persistence), a small int on 32-bit."""
    if _epoch is None:
        return int(_t.time()) - _SYS_REL
    return _epoch + _advance() // 1000


def time():
    """Site wall-clock seconds since 1970 (int; a long int on 32-bit: for the wire)."""
    if _epoch is None:
        return int(_t.time()) + _EPOCH_FIX
    return rel() + EPOCH


# A wall clock below 2024-01-01 has not been set yet (an ESP32 RTC restarts at 2000-01-01
# after a power cut, before NTP): cloud expiry and replay floors cannot be judged.
_VALID_REL = -31622400               # 2024-01-01 in rel() seconds (366 days before EPOCH)
VALID_FROM = EPOCH + _VALID_REL      # 1704067200 (unix s; compared only)


def valid(t=None):
    """The wall clock is set (t: unix s; default now, judged in small ints)."""
    if t is None:
        return rel() >= _VALID_REL
    return t >= VALID_FROM

# Chooses the firmware slot at boot (called from boot.py; docs/ota.md). Never able to stop
# the board from booting: any error here boots the base firmware. It reads the sealed OTA
# boot record with the base edgefw modules, then forgets them, so `import edgefw...`
# afterwards loads the chosen slot's package (its folder first on sys.path).
import sys

chosen = "base"


def _forget():
    for k in list(sys.modules):
        if k == "edgefw" or k.startswith("edgefw."):
            del sys.modules[k]


def _slot_ok(slot):
    from edgefw import otarec, store
    return store.read_checked(otarec.slot_dir(slot) + "/manifest.json")[1] is not None


def choose():
    global chosen
    try:
        from edgefw import otarec
        slot, rec = otarec.decide(otarec.read(), _slot_ok)
        if rec is not None:
            otarec.write(rec)
        if slot != otarec.BASE:
            sys.path.insert(0, otarec.slot_dir(slot))
        chosen = slot
    except Exception as e:  # a broken record or filesystem: the base firmware boots
        print("otaboot: %r: booting the base firmware" % (e,))
        chosen = "base"
    _forget()
    if chosen != "base":
        print("otaboot: firmware slot", chosen)
    return chosen


def broken(e):
    """main.py could not start the firmware: on trial, back to the previous slot now."""
    try:
        from edgefw import otarec
        r = otarec.read()
        if r is not None and r.get("trial") and chosen == r.get("active"):
            otarec.write(otarec.failed(r, "start: %r" % (e,)))
            print("otaboot: slot %s failed to start (%r): rolling back" % (chosen, e))
            reset()
    except SystemExit:
        raise
    except Exception as x:
        print("otaboot: %r" % (x,))


def reset():
    try:
        import machine
        r = getattr(machine, "reset", None)  # the unix port's machine has none
    except ImportError:
        r = None
    if r is not None:
        r()
    # unix: the virtual gateway takes SIGUSR1 as a reset (sys.exit under `micropython -i`
    # only drops to the REPL); not hal.reset: this slot's own modules may be the broken part
    import os
    os.system("kill -USR1 $PPID")
    sys.exit(3)

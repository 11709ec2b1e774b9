# Config boot order and the trial boot of a new config (runs on CPython and MicroPython).
# config.py works with paths relative to the gateway's root: each test runs in a scratch
# directory (chdir in, restored after).
import os

from edgefw import config

DIR = "/tmp/edgegw-test-config"
FILES = (config.PATH, config.LAST_GOOD, config.TRIAL, config.PATH + ".tmp",
         config.LAST_GOOD + ".tmp", config.TRIAL + ".tmp")


def _in_dir(fn):
    # run fn() inside a clean DIR, then go back whatever happens
    try:
        os.mkdir(DIR)
    except OSError:
        pass
    for f in FILES:
        try:
            os.remove(DIR + "/" + f)
        except OSError:
            pass
    old = os.getcwd()
    os.chdir(DIR)
    try:
        fn()
    finally:
        os.chdir(old)


def _cfg(dev):
    c = config.default()
    c["device_id"] = dev
    return c


def _put(path, cfg):
    config.write_atomic(path, config.dumps(cfg))


def _text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _boot():
    cfg, src, rep = config.boot()
    return cfg["device_id"], src, rep


def test_first_config_becomes_last_good_at_once():
    def t():
        _put(config.PATH, _cfg("gw-a"))
        assert _boot() == ("gw-a", config.PATH, [])
        assert _text(config.LAST_GOOD) == _text(config.PATH)
        assert not config.on_trial() and config.trial_status()["state"] == "confirmed"
        assert _boot() == ("gw-a", config.PATH, [])  # the same file again: nothing to try
    _in_dir(t)


def test_new_config_runs_on_trial_until_confirmed():
    def t():
        _put(config.LAST_GOOD, _cfg("gw-old"))
        _put(config.PATH, _cfg("gw-new"))
        assert _boot() == ("gw-new", config.PATH, [])
        # review finding 13: not the last good copy before it has been shown to work
        assert "gw-old" in _text(config.LAST_GOOD)
        assert config.on_trial() and config.trial_status() == {"state": "trial", "tries": 1}
        assert _text(config.TRIAL) is not None  # the attempt is on flash before the app runs
        assert config.confirm()
        assert _text(config.LAST_GOOD) == _text(config.PATH) and _text(config.TRIAL) is None
        assert not config.on_trial() and not config.confirm()
        assert _boot() == ("gw-new", config.PATH, [])
        assert config.trial_status()["state"] == "confirmed"
    _in_dir(t)


def test_restart_on_trial_falls_back_to_last_good():
    def t():
        _put(config.LAST_GOOD, _cfg("gw-old"))
        _put(config.PATH, _cfg("gw-new"))
        assert _boot()[0] == "gw-new" and config.on_trial()
        # power cut / crash / watchdog before confirm(): the next boot runs the last good
        dev, src, rep = _boot()
        assert (dev, src) == ("gw-old", config.LAST_GOOD)
        assert len(rep) == 1 and rep[0].startswith("config.json: trial failed")
        st = config.trial_status()
        assert st["state"] == "failed" and st["why"] == rep[0] and not config.on_trial()
        # and keeps doing so: the failed config gets no second trial
        assert _boot()[:2] == ("gw-old", config.LAST_GOOD)
        assert not config.confirm()
        # a new config (a new push) gets its own trial
        _put(config.PATH, _cfg("gw-newer"))
        assert _boot() == ("gw-newer", config.PATH, []) and config.on_trial()
        assert config.confirm() and "gw-newer" in _text(config.LAST_GOOD)
    _in_dir(t)


def test_invalid_config_boots_last_good_with_the_error():
    def t():
        _put(config.LAST_GOOD, _cfg("gw-old"))
        bad = config.dumps(_cfg("gw-new"))
        with open(config.PATH, "w") as f:
            f.write(bad[:len(bad) // 2])  # torn write
        dev, src, rep = _boot()
        assert (dev, src) == ("gw-old", config.LAST_GOOD)
        assert rep and rep[0].startswith("config.json: ")
        assert config.trial_status()["state"] == "none" and not config.on_trial()
        # a check (maps, dispatch parameters) that refuses config.json: the same
        _put(config.PATH, _cfg("gw-new"))
        cfg, src, rep = config.boot(lambda c: ["devices[0].map: nope"]
                                    if c["device_id"] == "gw-new" else [])
        assert (cfg["device_id"], src) == ("gw-old", config.LAST_GOOD)
        assert rep == ["config.json: devices[0].map: nope"]
        # nothing usable at all: the factory default
        os.remove(config.LAST_GOOD)
        with open(config.PATH, "w") as f:
            f.write("{")
        dev, src, rep = _boot()
        assert src == "factory default" and dev == "edgegw-0001"
    _in_dir(t)


def test_failed_trial_without_a_usable_last_good_still_runs_the_site_config():
    def t():
        _put(config.LAST_GOOD, _cfg("gw-old"))
        _put(config.PATH, _cfg("gw-new"))
        _boot()
        with open(config.LAST_GOOD, "w") as f:
            f.write("{}\n#crc32 00000000\n")  # the last good copy got corrupted meanwhile
        dev, src, rep = _boot()
        assert (dev, src) == ("gw-new", config.PATH)
        assert rep[0].startswith("config.json: trial failed")
        assert rep[1].startswith("config.last_good.json: checksum")
        assert rep[2].startswith("config.json: runs although its trial failed")
    _in_dir(t)


def test_unreadable_trial_marker_counts_as_a_failed_trial():
    def t():
        _put(config.LAST_GOOD, _cfg("gw-old"))
        _put(config.PATH, _cfg("gw-new"))
        with open(config.TRIAL, "w") as f:
            f.write('{"crc": "12')
        dev, src, rep = _boot()
        assert (dev, src) == ("gw-old", config.LAST_GOOD) and "trial failed" in rep[0]
        assert _boot()[0] == "gw-old"
        _put(config.PATH, _cfg("gw-newer"))  # the marker was rewritten: a new push still works
        assert _boot()[0] == "gw-newer" and config.on_trial()
    _in_dir(t)


def test_config_replaced_during_trial_is_not_promoted_unrun():
    def t():
        _put(config.LAST_GOOD, _cfg("gw-old"))
        _put(config.PATH, _cfg("gw-a"))
        assert _boot()[0] == "gw-a" and config.on_trial()
        _put(config.PATH, _cfg("gw-b"))  # a push while gw-a runs on trial
        assert not config.confirm()
        assert config.trial_status()["state"] == "changed" and "gw-old" in _text(config.LAST_GOOD)
        assert _boot() == ("gw-b", config.PATH, []) and config.on_trial()
    _in_dir(t)


def test_trial_s_validated():
    c = _cfg("gw")
    assert config.validate(c) == [] and c["trial_s"] == 600
    c = _cfg("gw")
    c["trial_s"] = 5
    assert config.validate(c) == ["trial_s: 5 out of range 10..86400"]


def test_factory_default_that_cannot_be_checked_boots_without_buses():
    # out of memory while checking the factory default's buses: the last resort is the
    # factory default without buses, every field filled in (no part reads a missing one)
    real = config._validate

    def short_of_memory(c):
        if isinstance(c, dict) and c.get("buses"):
            raise MemoryError("memory allocation failed")
        return real(c)

    def run():
        config._validate = short_of_memory
        try:
            cfg, src, rep = config.boot()
        finally:
            config._validate = real
        assert src == "factory default without buses", src
        assert cfg["buses"] == [] and cfg["devices"] == []
        assert cfg["status_s"] == 10 and cfg["trial_s"] == 600
        assert [r for r in rep if "MemoryError" in r], rep
    _in_dir(run)

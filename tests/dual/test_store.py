# The one sealed-file format (edgefw.store) on every runtime: files the firmware wrote
# before store.py existed (config.py, energy.py, auth.py each had a copy) read unchanged,
# so an update keeps the counters, the replay floor and the config; a torn file is refused.
import json
import os

from edgefw import auth, config, energy, store
from edgefw import dispatch as D


def _tmp(name):
    p = "/tmp/edgegw-test-store-%s" % name
    for q in (p, p + ".tmp", p + ".0", p + ".1"):
        try:
            os.remove(q)
        except OSError:
            pass
    return p


def _old_sealed(body):
    # the trailer as energy.py and auth.py wrote it before store.py
    from binascii import crc32
    return "%s\n#crc32 %08x\n" % (body, crc32(body.encode()))


def _put(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_seal_is_the_old_format_and_write_json_the_same_bytes():
    body = json.dumps({"a": [1, 2, 3], "b": "h\u00e9"})
    assert store.seal(body) == _old_sealed(body)
    p = _tmp("bytes")
    store.write_json(p, json.loads(body), True)
    with open(p) as f:
        assert f.read() == store.seal(json.dumps(json.loads(body)))
    assert store.read_checked(p) == (True, json.dumps(json.loads(body)))


def test_torn_missing_and_unsealed_files_are_refused():
    p = _tmp("torn")
    assert store.read_checked(p) == (False, None)
    text = store.seal('{"x": 1}')
    _put(p, text[:-4])
    assert store.read_checked(p) == (True, None)
    _put(p, '{"x": 1}')
    assert store.read_checked(p) == (True, None)
    _put(p, text.replace("1", "2", 1))
    assert store.read_checked(p) == (True, None)


def test_energy_slot_written_by_old_firmware_is_restored():
    p = _tmp("energy")
    P = D.validate_params({"battery_wh": 100000, "pcs_w": 50000})
    e = energy.Energy(P)
    for _ in range(100):
        e.step(1000, 5000, 5000, 3000, 0, 0, -2000)
    _put(p + ".1", _old_sealed(json.dumps(e.state())))
    f = energy.Energy(P)
    assert f.load(p) and f.counters() == e.counters()


def test_auth_slot_written_by_old_firmware_keeps_its_seqs():
    p = _tmp("auth")
    _put(p + ".1", _old_sealed(json.dumps({"n": 1, "floor": None, "last": {"setpoint": 41}})))
    v = auth.Verifier(b"k" * 32, "gw-1", p, 1000000)
    assert v.recovered == "slot" and v.last_seq("setpoint") == 41


def test_config_sealed_by_old_firmware_parses():
    cfg = {"device_id": "gw-1"}
    assert config.parse(_old_sealed(json.dumps(cfg))) == (cfg, [])
    bad = _old_sealed(json.dumps(cfg)).replace("gw-1", "gw-2")
    assert config.parse(bad)[0] is None

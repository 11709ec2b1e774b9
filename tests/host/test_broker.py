"""One broker-address parser for every command and the HIL plug-in: a missing port is 1883
everywhere, a bad one a one-line error naming the option."""
import os
import sys

import pytest

from edgegw import broker, cmd_link, cmd_status
from edgegw.cli import UserError
from edgegw.tracker import publish


def test_missing_port_is_the_mqtt_default_everywhere():
    assert broker.parse_broker("gw.local") == ("gw.local", 1883)
    assert publish.parse_broker("gw.local") == ("gw.local", 1883)
    assert cmd_link.parse_broker("gw.local") == ("gw.local", 1883)
    assert cmd_status.parse_broker("gw.local") == ("gw.local", 1883)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "hil_tests"))
    from hilkit import dut     # the HIL plug-in's --broker
    assert dut.parse_broker("gw.local") == ("gw.local", 1883)
    assert dut.parse_broker("10.0.0.2:1884") == ("10.0.0.2", 1884)


def test_port_given():
    assert broker.parse_broker(" 127.0.0.1:18830 ") == ("127.0.0.1", 18830)


@pytest.mark.parametrize("bad,word", [("h:x", "not a number"), ("h:0", "out of range"),
                                      ("h:65536", "out of range"), (":1883", "host is missing"),
                                      ("", "HOST or HOST:PORT"), (None, "HOST or HOST:PORT")])
def test_bad_address_names_the_option(bad, word):
    with pytest.raises(ValueError) as e:
        broker.parse_broker(bad, "--mqtt")
    assert str(e.value).startswith("--mqtt ") and word in str(e.value)
    if isinstance(bad, str) and bad:
        with pytest.raises(UserError) as e:
            cmd_link.parse_broker(bad)
        assert str(e.value).startswith("--broker ")


@pytest.fixture
def mqtt_broker():
    from edgegw.mosq import Mosquitto
    with Mosquitto() as m:
        yield "127.0.0.1:%d" % m.port


def test_first_message_skips_what_is_not_json_and_what_accept_refuses(mqtt_broker):
    # one reader of "the first message on a topic" for the link, OTA and tracker commands
    import paho.mqtt.client as mqtt
    from edgegw.broker import first_message
    host, port = mqtt_broker.split(":")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect(host, int(port))
    c.loop_start()
    try:
        c.publish("t/raw", b"\xffnot json", qos=1, retain=True).wait_for_publish(5)
        assert first_message(host, int(port), "t/raw", 1, 0.5) is None
        assert publish.read_topic(mqtt_broker, "t/raw", 0.5) is None
        c.publish("t/json", b'{"ts": 7}', qos=1, retain=True).wait_for_publish(5)
        assert first_message(host, int(port), "t/json", 1, 3) == {"ts": 7}
        assert publish.read_topic(mqtt_broker, "t/json", 3) == {"ts": 7}
        assert cmd_link.first_message(mqtt_broker, "t/json", 0, 0.5,
                                      lambda d: d.get("ts") == 8) is None
    finally:
        c.loop_stop()
        c.disconnect()


def test_first_message_unreachable_broker_is_a_user_error():
    with pytest.raises(UserError) as e:
        cmd_link.first_message("127.0.0.1:1", "t", 0, 0.5)
    assert str(e.value).startswith("--broker 127.0.0.1:1")
    with pytest.raises(ConnectionError):
        broker.first_message("127.0.0.1", 1, "t", 0, 0.5)

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

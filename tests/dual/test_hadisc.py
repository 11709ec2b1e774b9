# Home Assistant discovery payloads (edgefw/hadisc.py): small, valid JSON, reading fields
# the telemetry record has. Runs on CPython and both MicroPythons.
import json

from edgefw import hadisc
from protocols import topics as T


def test_config_topics_and_node_id():
    assert T.ha_node_id("gw-1") == "gw-1"
    assert T.ha_node_id("site.a gw") == "site_a_gw"
    assert T.ha_config_topic(T.HA_PREFIX, "gw.1", "grid_w") == \
        "homeassistant/sensor/gw_1/grid_w/config"


def test_every_config_is_small_json_with_what_ha_needs():
    fields = T.telemetry_fields()
    seen = []
    for p in hadisc.POINTS:
        s = json.dumps(hadisc.config("gw-1", p, "1.2"))
        assert len(s) < 1024, (p[0], len(s))   # one small allocation each
        d = json.loads(s)
        assert d["state_topic"] == "edgegw/gw-1/telemetry"
        assert d["unique_id"] == "gw-1_" + p[0] and d["unique_id"] not in seen
        seen.append(d["unique_id"])
        assert d["availability"][0]["topic"] == "edgegw/gw-1/status"
        assert d["device"]["identifiers"] == ["gw-1"]
        assert d["device"]["sw_version"] == "1.2"
        assert p[2] in fields, p
        assert ("value_json." + p[2]) in d["value_template"]
        if p[3] == "W":
            assert d["device_class"] == "power" and d["state_class"] == "measurement"
        if p[3] == "Wh":
            assert d["state_class"] == "total_increasing"
    soc = hadisc.config("gw-1", hadisc.POINTS[4])
    assert soc["value_template"] == "{{ (value_json.soc_cpct / 100) }}"
    assert soc["unit_of_measurement"] == "%"

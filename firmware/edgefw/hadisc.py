# Home Assistant MQTT discovery: the gateway announces its main telemetry points as HA
# sensors (retained config topics), so a node appears in HA by itself, reading the same
# telemetry topic as the cloud: no second Modbus master on the bus. Sent once per boot,
# one small payload per poll (each < 1 KiB: no big allocation on a ~110 KiB heap), QoS 1;
# done when the broker acked them all on one connection, else sent again on the next.
# Spec: docs/mqtt.md "Home Assistant discovery".
import json

from protocols import topics as T

# object_id, name, field in the telemetry record ("e." = energy counters), unit,
# device_class, state_class, divisor (the record is integer: soc_cpct / 100 = %)
POINTS = (
    ("grid_w", "Grid power", "grid_w", "W", "power", "measurement", 1),
    ("pv_w", "PV power", "pv_w", "W", "power", "measurement", 1),
    ("it_w", "IT load", "it_w", "W", "power", "measurement", 1),
    ("bat_w", "Battery power", "bat_w", "W", "power", "measurement", 1),
    ("soc", "Battery SOC", "soc_cpct", "%", "battery", "measurement", 100),
    ("headroom_w", "Green headroom", "headroom_w", "W", "power", "measurement", 1),
    ("pv_wh", "PV energy", "e.pv_wh", "Wh", "energy", "total_increasing", 1),
    ("grid_imp_wh", "Grid import", "e.grid_imp_wh", "Wh", "energy", "total_increasing", 1),
    ("grid_exp_wh", "Grid export", "e.grid_exp_wh", "Wh", "energy", "total_increasing", 1),
    ("it_wh", "IT energy", "e.it_wh", "Wh", "energy", "total_increasing", 1),
    ("it_green_wh", "IT green energy", "e.it_green_wh", "Wh", "energy", "total_increasing",
     1),
    ("link_state", "Link state", "state", None, None, None, 1),
)


def value_template(field, div):
    t = "value_json." + field
    if div != 1:
        t = "(%s / %d)" % (t, div)
    return "{{ %s }}" % t


def config(device_id, point, version=None):
    """The discovery config (dict) of one point of POINTS."""
    oid, name, field, unit, dcls, scls, div = point
    node = T.ha_node_id(device_id)
    st = T.topic(device_id, T.STATUS)
    d = {"name": name, "unique_id": "%s_%s" % (node, oid),
         "object_id": "%s_%s" % (node, oid),
         "state_topic": T.topic(device_id, T.TELEMETRY),
         "value_template": value_template(field, div),
         # status is JSON {"status": "online"|"offline"}; "offline" is the last will
         "availability": [{"topic": st, "value_template": "{{ value_json.status }}",
                           "payload_available": "online",
                           "payload_not_available": "offline"}],
         "device": {"identifiers": [node], "name": "edgegw " + device_id,
                    "manufacturer": "edgegw", "model": "edge node gateway"}}
    if version:
        d["device"]["sw_version"] = version
    if unit:
        d["unit_of_measurement"] = unit
    if dcls:
        d["device_class"] = dcls
    if scls:
        d["state_class"] = scls
    return d


class Discovery:
    """Publishes POINTS' configs through an edgefw.mqtt client; call poll() after the
    client's poll. After `done`, nothing more is sent this boot."""

    def __init__(self, device_id, prefix=T.HA_PREFIX, version=None):
        self.device_id = device_id
        self.prefix = prefix
        self.version = version
        self.done = False
        self._i = 0          # next point to send
        self._conn = -1      # client.connects of the connection the sending runs on
        self._pids = []

    def poll(self, c):
        if self.done or not c.connected:
            return
        if c.connects != self._conn:   # a new connection: (re)start from the first
            self._conn = c.connects
            self._i = 0
            self._pids = []
        if self._i < len(POINTS):
            if not c.can_publish():
                return
            p = POINTS[self._i]
            pid = c.publish(T.ha_config_topic(self.prefix, self.device_id, p[0]),
                            json.dumps(config(self.device_id, p, self.version)), 1, True)
            if pid:
                self._pids.append(pid)
                self._i += 1
            return
        for e in c.inflight:            # every config acked on this connection?
            if e[0] in self._pids:
                return
        self.done = True

# What the gateway sends the cloud, in order and exactly once after dedup (docs/mqtt.md):
# every record gets (seq, ts, boot); it goes straight to the broker while the link is up,
# the ring is empty and the QoS 1 window has room, else into the store-and-forward ring.
# A record in flight when the connection drops moves into the ring (it may then arrive
# twice: receivers drop the copy by (device_id, seq)).
import json

from edgefw import clock
from edgefw.store import write_atomic
from protocols import topics as T

K_TELEMETRY = 1  # ring record kinds -> topic
K_EVENT = 2
_TOPIC_OF = {K_TELEMETRY: T.TELEMETRY, K_EVENT: T.EVENTS}

_SEQ_BLOCK = 1000  # seq numbers reserved per write of the seq file (flash wear)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)  # from the file: not its whole text as one string
    except (OSError, ValueError):
        return None


class Outbox:
    def __init__(self, fs_dir, device_id, ring, window, n):
        self.dir = fs_dir
        self.device_id = device_id
        self.ring = ring
        self.window = window     # QoS 1 records in flight at most
        self.n = n               # the link's counters (tx, tx_ring, acked, spilled, lost_fs)
        # one seq counter for telemetry and events, kept rising across reboots by
        # reserving blocks of _SEQ_BLOCK (one file write per block, not per record)
        st = read_json(fs_dir + "/link_tx_seq.json") or {}
        self.seq = st.get("next", 0)
        self.boot = st.get("boot", 0) + 1
        self.seq_reserved = self.seq
        self.reserve()
        self.inflight = []       # [pid, ring token or None, kind, seq, payload, acked]

    def reserve(self):
        if self.seq >= self.seq_reserved:
            self.seq_reserved = self.seq + _SEQ_BLOCK
            write_atomic(self.dir + "/link_tx_seq.json",
                         json.dumps({"next": self.seq_reserved, "boot": self.boot}))

    def send(self, c, kind, d):
        """Stamp d (seq, ts, boot) and send it through client c, or store it."""
        d["seq"] = self.seq
        d["ts"] = clock.time()
        d["boot"] = self.boot
        self.seq += 1
        self.reserve()
        payload = json.dumps(d)
        if c.connected and len(self.ring) == 0 and len(self.inflight) < self.window:
            pid = c.publish(T.topic(self.device_id, _TOPIC_OF[kind]), payload, 1)
            if pid:
                self.inflight.append([pid, None, kind, d["seq"], payload, False])
                self.n["tx"] += 1
                return
        # store and forward; sent records still in flight go first to keep the order
        self.spill()
        self.store(kind, d["seq"], payload)

    def store(self, kind, seq, payload):
        try:
            self.ring.append(kind, seq, payload)
        except (OSError, ValueError):
            self.n["lost_fs"] += 1  # filesystem full or broken: counted, not fatal

    def spill(self):
        # records sent directly and not acked move into the ring
        keep = []
        for e in self.inflight:
            if e[1] is None:
                self.store(e[2], e[3], e[4])
                self.n["spilled"] += 1
            else:
                keep.append(e)
        self.inflight = keep

    def drain(self, c):
        """Send from the ring while the window and the client have room."""
        while c.connected and len(self.inflight) < self.window and c.can_publish() \
                and self.ring.unsent():
            x = self.ring.next()
            if x is None:
                return
            tok, kind, seq, payload = x
            pid = c.publish(T.topic(self.device_id, _TOPIC_OF.get(kind, T.EVENTS)), payload, 1)
            self.inflight.append([pid, tok, kind, seq, payload, False])
            self.n["tx_ring"] += 1

    def puback(self, pid):
        for e in self.inflight:
            if e[0] == pid:
                e[5] = True
                break
        while self.inflight and self.inflight[0][5]:
            e = self.inflight.pop(0)
            self.n["acked"] += 1
            if e[1] is not None:
                self.ring.ack(e[1])

    def disconnected(self):
        self.spill()
        self.inflight = []
        self.ring.rewind()

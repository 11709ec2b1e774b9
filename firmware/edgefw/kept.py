# The cloud's last accepted schedule, forecast and tariff, kept in link_NAME.json so that a
# gateway rebooted while the link is down goes on following them until they expire
# (app._CloudIn.restore feeds them to the dispatcher once the clock is valid).
from edgefw.outbox import read_json
from edgefw.store import write_json

KINDS = ("schedule", "forecast", "tariff")


class Kept:
    def __init__(self, fs_dir):
        self.dir = fs_dir
        self.last = {}
        for k in KINDS:
            d = read_json("%s/link_%s.json" % (fs_dir, k))
            if isinstance(d, dict):
                self.last[k] = d
        self.pending = len(self.last) > 0     # replay() due once the clock is valid

    def replay(self, on_input):
        """Hand what was kept to on_input(kind, d), once (the consumer judges expiry)."""
        self.pending = False
        bad = None
        for k in KINDS:
            if k in self.last:
                try:
                    on_input(k, self.last[k])
                except Exception as e:      # one bad file must not cost the others
                    bad = "kept %s: %s" % (k, e)
        if bad:
            raise ValueError(bad)

    def take(self, kind, cmd):
        """Keep an accepted command of one of KINDS; returns what is kept (the command
        without its signature and sequence fields the dispatcher does not use)."""
        if kind == "schedule":
            d = {"windows": cmd["windows"], "exp": cmd["exp"]}
        elif kind == "tariff":
            d = {"tariff": cmd["tariff"], "exp": cmd["exp"]}
        else:
            d = {}
            for k in cmd:
                if k != "sig":
                    d[k] = cmd[k]
        self.last[kind] = d
        try:
            # json.dump to the file: a forecast's text (2 KB+) is never one string
            write_json("%s/link_%s.json" % (self.dir, kind), d)
        except OSError:
            pass
        return d

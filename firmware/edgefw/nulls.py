# Stand-ins for the optional parts a site may not configure (no cloud link, no energy
# counters): they take every call and do nothing, so the loop calls them unconditionally.
# Where the part's absence shows (status "link"/"energy", telemetry "e"/"g"), they
# answer None.


class NoLink:
    """The link of a site without a cloud: nothing goes out, no setpoint comes in."""
    state = None
    client = None

    def poll(self, now):
        pass

    def setpoint(self, now_r, local, ok):
        return None

    def event(self, kind, data=None):
        pass

    def telemetry(self, rec):
        pass

    def headroom(self, d):
        pass

    def stats(self):
        return None


class NoEnergy:
    """No energy counters (no dispatch parameters, or the module is absent)."""

    def step(self, dt, pva, pv, it, aux, bat, grid):
        pass

    def persist(self, now_s, path):
        pass

    def save(self, path):
        pass

    def counters(self):
        return None

    def hourly(self, seq):
        return None


class NoOta:
    """No firmware updates (no link to bring them)."""

    def poll(self, now):
        pass

    def status(self):
        return None


NO_LINK = NoLink()
NO_OTA = NoOta()
NO_ENERGY = NoEnergy()

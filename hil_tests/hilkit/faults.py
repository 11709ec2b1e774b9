"""Line faults on a simulated device: a share of its answers with a corrupted CRC, noise
bursts (random bytes, then a t3.5 silence, then the answer). Device modes (silent,
exception) and site faults (bms_alarm, pcs_fault) are SimDevice/SimSite's own."""
import random
import time


class LineFaults:
    def __init__(self, gw, name, crc=0.0, noise=0.0, seed=1):
        self.dev = gw.devices[name]
        self.bus = next(b for b in gw.buses.values() if self.dev in b.devs.values())
        self.rng = random.Random(seed)
        self.crc, self.noise = crc, noise
        self.n = {"answers": 0, "crc": 0, "noise": 0}
        self._orig = self.dev.handle
        self.dev.handle = self._handle

    def _handle(self, req):
        rsp = self._orig(req)
        if rsp is None:
            return None
        self.n["answers"] += 1
        if self.noise and self.rng.random() < self.noise:
            k = self.rng.randint(4, 12)
            self.bus.st.write(bytes(self.rng.randrange(256) for _ in range(k)))
            self.n["noise"] += 1
            time.sleep(k * self.bus.char_s + max(self.bus.t35, 0.002))
        if self.crc and self.rng.random() < self.crc:
            rsp = rsp[:-2] + bytes((rsp[-2] ^ 0x5A, rsp[-1]))
            self.n["crc"] += 1
        return rsp

    def remove(self):
        self.dev.handle = self._orig

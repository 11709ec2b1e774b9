"""Where the compute-load figures come from. Each reader returns figures labelled with their
source, or says why it has none; `Sampler` combines them into one reading per call.

Sources, best first for the node total:
  ipmi   BMC DCMI power (`ipmitool dcmi power reading`): whole server at the wall.
  rapl   Linux powercap /sys/class/powercap/intel-rapl:N/energy_uj: CPU package only
         (no fans, disks, PSU loss), so it is combined with nvml and labelled as partial.
  nvml   NVIDIA GPUs via pynvml (package nvidia-ml-py) when importable.
  model  P = P_idle + (P_max - P_idle) * u from psutil CPU utilisation, when nothing meters.
All powers are int W; utilisation is int 0.1 % (`_pm`, per mille) so figures stay integers.
"""
import os
import re
import shutil
import subprocess
import time

import psutil

POWERCAP = "/sys/class/powercap"
IPMI_CMD = ("ipmitool", "dcmi", "power", "reading")


def cpu_util_pm(interval=None):
    """CPU utilisation over all cores in 0.1 % since the previous call (psutil semantics:
    the first call with interval=None has no reference and returns 0)."""
    return int(round(psutil.cpu_percent(interval=interval) * 10))


def model_w(util_pm, p_idle_w, p_max_w):
    """Linear utilisation-to-power model, integers: P_idle + (P_max - P_idle) * u."""
    if not 0 <= util_pm <= 1000:
        raise ValueError("util_pm: %r not in 0..1000" % (util_pm,))
    return p_idle_w + ((p_max_w - p_idle_w) * util_pm + 500) // 1000


# ---- RAPL (powercap) -----------------------------------------------------------------------

def rapl_zones(root=POWERCAP):
    """Top-level RAPL zones [(zone_dir, name, max_energy_range_uj)]. Sub-zones (core, uncore,
    dram: intel-rapl:N:M) are inside their package and skipped so nothing counts twice;
    'psys' (whole SoC platform, laptops) also covers the packages, so when present it is used
    alone."""
    zones = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return zones
    for e in entries:
        if not re.match(r"^intel-rapl:\d+$", e):
            continue
        d = os.path.join(root, e)
        try:
            name = _read(os.path.join(d, "name")).strip()
            rng = int(_read(os.path.join(d, "max_energy_range_uj")))
        except (OSError, ValueError):
            continue
        zones.append((d, name, rng))
    psys = [z for z in zones if z[1].startswith("psys")]
    return psys or zones


def _read(path):
    with open(path) as f:
        return f.read()


def energy_delta_uj(e0, e1, max_range_uj):
    """Energy between two energy_uj readings; the counter wraps to 0 after max_energy_range_uj."""
    if e1 >= e0:
        return e1 - e0
    return max_range_uj - e0 + e1


class Rapl:
    """Package power from successive energy_uj readings: W = delta uJ / delta us."""

    def __init__(self, root=POWERCAP, now_us=None):
        self.root = root
        self._now_us = now_us or (lambda: time.monotonic_ns() // 1000)
        self.zones = rapl_zones(root)
        self._last = {}     # zone dir -> (energy_uj, t_us)
        self.why = None if self.zones else "no RAPL zones under %s" % root

    def read(self):
        """[(name, W)] for zones with two readings; [] on the first call (it only primes)."""
        out = []
        t = self._now_us()
        for d, name, rng in self.zones:
            try:
                e = int(_read(os.path.join(d, "energy_uj")))
            except PermissionError:
                # kernels since 2020 (CVE-2020-8694) make energy_uj root-only
                self.why = "%s/energy_uj not readable (root only on this kernel)" % d
                continue
            except (OSError, ValueError) as ex:
                self.why = "%s/energy_uj: %s" % (d, ex)
                continue
            prev = self._last.get(d)
            self._last[d] = (e, t)
            if prev is None or t <= prev[1]:
                continue
            du = energy_delta_uj(prev[0], e, rng)
            out.append((name, (du + (t - prev[1]) // 2) // (t - prev[1])))
        return out


# ---- NVML -------------------------------------------------------------------------------------

class Nvml:
    """GPU power (W) and utilisation (0.1 %) per device via pynvml, when importable."""

    def __init__(self):
        self.nv = None
        self.handles = []
        try:
            import pynvml
        except ImportError:
            self.why = "pynvml not importable (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
            n = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        except Exception as ex:  # pynvml raises NVMLError subclasses (no driver, no device)
            self.why = "NVML init failed: %s" % ex
            return
        self.nv = pynvml
        self.why = None if self.handles else "NVML found no GPU"

    def read(self):
        """[(name, W, util_pm)] per GPU."""
        out = []
        for i, h in enumerate(self.handles):
            try:
                mw = self.nv.nvmlDeviceGetPowerUsage(h)          # milliwatts
                u = self.nv.nvmlDeviceGetUtilizationRates(h).gpu  # percent
            except Exception as ex:
                self.why = "NVML gpu%d: %s" % (i, ex)
                continue
            out.append(("gpu%d" % i, (mw + 500) // 1000, u * 10))
        return out


# ---- IPMI DCMI --------------------------------------------------------------------------------

_IPMI_RE = re.compile(r"Instantaneous power reading:\s*(\d+)\s*Watts", re.I)
_IPMI_STATE = re.compile(r"Power reading state is:\s*(\w+)", re.I)


def parse_dcmi(text):
    """W from `ipmitool dcmi power reading` output, or None (no reading, or the BMC says the
    power reading is deactivated, when the number is not a measurement)."""
    m = _IPMI_RE.search(text)
    if not m:
        return None
    st = _IPMI_STATE.search(text)
    if st and st.group(1).lower() != "activated":
        return None
    return int(m.group(1))


class Ipmi:
    def __init__(self, cmd=IPMI_CMD, timeout_s=5):
        self.cmd = list(cmd)
        self.timeout_s = timeout_s
        self.ok = shutil.which(self.cmd[0]) is not None
        self.why = None if self.ok else "%s not installed" % self.cmd[0]

    def read(self):
        """W or None (self.why says why)."""
        if not self.ok:
            return None
        try:
            p = subprocess.run(self.cmd, capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as ex:
            self.why = "%s: %s" % (" ".join(self.cmd), ex)
            return None
        w = parse_dcmi(p.stdout) if p.returncode == 0 else None
        if w is None:
            err = (p.stderr or p.stdout).strip().splitlines()
            self.why = "%s: rc %d %s" % (" ".join(self.cmd), p.returncode, err[-1] if err else "")
            # no BMC on this host: stop asking every interval
            if p.returncode != 0:
                self.ok = False
        return w


# ---- combining ------------------------------------------------------------------------------

class Sampler:
    """One reading per `sample()`: {"ts", "measured_w", "source", "util_pm", "figures": [...],
    "unavailable": {source: reason}}. Each figure is {"name", "w" or "util_pm", "source"}."""

    def __init__(self, p_idle_w=100, p_max_w=300, rapl_root=POWERCAP, ipmi=True, nvml=True,
                 now=time.time):
        if not 0 <= p_idle_w <= p_max_w:
            raise ValueError("p_idle_w/p_max_w: need 0 <= idle (%r) <= max (%r)" % (p_idle_w, p_max_w))
        self.p_idle_w = p_idle_w
        self.p_max_w = p_max_w
        self.now = now
        self.rapl = Rapl(rapl_root)
        self.nvml = Nvml() if nvml else None
        self.ipmi = Ipmi() if ipmi else None
        cpu_util_pm()          # prime psutil's reference point
        self.rapl.read()       # and RAPL's first energy reading

    def sample(self):
        figs = []
        miss = {}
        u = cpu_util_pm()
        figs.append({"name": "cpu", "util_pm": u, "source": "psutil"})
        ipmi_w = self.ipmi.read() if self.ipmi else None
        if ipmi_w is not None:
            figs.append({"name": "server", "w": ipmi_w, "source": "ipmi"})
        elif self.ipmi:
            miss["ipmi"] = self.ipmi.why
        rapl = self.rapl.read()
        for name, w in rapl:
            figs.append({"name": name, "w": w, "source": "rapl"})
        if not rapl:
            miss["rapl"] = self.rapl.why or "first RAPL reading (needs two)"
        gpus = self.nvml.read() if self.nvml else []
        for name, w, gu in gpus:
            figs.append({"name": name, "w": w, "util_pm": gu, "source": "nvml"})
        if self.nvml and not gpus:
            miss["nvml"] = self.nvml.why
        mw = model_w(min(max(u, 0), 1000), self.p_idle_w, self.p_max_w)
        figs.append({"name": "server", "w": mw, "source": "model"})
        gpu_w = sum(g[1] for g in gpus)
        if ipmi_w is not None:
            total, src = ipmi_w, "ipmi"       # the BMC already includes the GPUs
        elif rapl:
            total, src = sum(w for _, w in rapl) + gpu_w, "rapl+nvml" if gpus else "rapl"
        else:
            total, src = mw + gpu_w, "model+nvml" if gpus else "model"
        return {"ts": int(self.now()), "measured_w": total, "source": src, "util_pm": u,
                "figures": figs, "unavailable": miss}

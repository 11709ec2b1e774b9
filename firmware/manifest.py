# MicroPython freeze manifest of the gateway: protocols/, edgefw/, the register maps (as a
# data module) and boot.py/main.py, compiled into the firmware image so the bytecode and
# the maps stay in flash (an ESP32 without PSRAM has about 110 KiB of heap: loaded from
# the filesystem the code alone does not fit). README.md "Building an ESP32 image with the
# firmware frozen in" has the steps; in short, from a MicroPython checkout with ESP-IDF
# set up (`. $IDF_PATH/export.sh`):
#
#   cd micropython/ports/esp32
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/edgegw/firmware/manifest.py
#   edgegw flash --port /dev/ttyUSB0 --firmware build-ESP32_GENERIC/firmware.bin
#
# MicroPython's makemanifest runs this file with the working directory set to its folder
# (firmware/), so relative paths are from here. The register maps are made into
# protocols/maps_frozen.py (MAPS = {name: JSON text}) under build/frozen/ by
# host/edgegw/mapgen.py on every build: protocols/maps/*.json stays the source of truth.
# On the device the filesystem then holds only config.json (and maps/ for maps not frozen
# in): a protocols/ or edgefw/ folder there would shadow the frozen package.
import os
import sys

_REPO = os.path.dirname(os.getcwd())       # the cwd is firmware/ (see above)
_GEN = os.path.join(_REPO, "build", "frozen")

sys.path.insert(0, os.path.join(_REPO, "host"))
from edgegw import mapgen  # noqa: E402 (stdlib only: the build's Python runs it)

mapgen.write(os.path.join(_GEN, "protocols", "maps_frozen.py"))

# the port's own frozen modules (_boot.py mounting the filesystem, asyncio, ...)
include("$(PORT_DIR)/boards/manifest.py")

# codec, regmap, topics, trace; not membus.py (the in-memory bus of tests and memprobe)
package("protocols", files=sorted(f for f in os.listdir(os.path.join(_REPO, "protocols"))
                                  if f.endswith(".py") and f != "membus.py"),
        base_path=_REPO)
module("protocols/maps_frozen.py", base_path=_GEN)
package("edgefw", base_path=".")                 # the firmware modules
# run by name at every start: the port runs a frozen boot.py / main.py when the
# filesystem has none (deploy for a frozen image copies no code)
module("boot.py", base_path=".")
module("main.py", base_path=".")

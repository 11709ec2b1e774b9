# Hardware layer chooser: the same interface on the ESP32 and on unix (virtual gateway).
#   open_bus(bus_cfg) -> Bus with .stream (pollable), write(buf), readinto(buf) -> n, close()
#   Watchdog(timeout_ms).feed(); net_connect(net_cfg) -> bool; reset(); PLATFORM
import sys

if sys.platform == "esp32":
    from edgefw.hal_esp32 import *  # noqa: F401,F403
else:
    from edgefw.hal_unix import *  # noqa: F401,F403

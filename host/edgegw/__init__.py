"""edgegw host toolkit: flash, deploy, configure, trace, replay, simulate, evaluate, report."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTOCOLS_DIR = os.path.join(REPO, "protocols")
MAPS_DIR = os.path.join(PROTOCOLS_DIR, "maps")

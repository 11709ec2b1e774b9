import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
MICROPYTHON = os.path.join(VENV_BIN, "micropython")
MICROPYPATH = ".frozen:%s:%s" % (REPO, os.path.join(REPO, "firmware"))

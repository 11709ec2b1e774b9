# The HIL suite's pytest plugin (hilkit/plugin.py): options --target/--port/--bus/--broker/
# --speed, fixtures gateway/site/replayer/broker/cloud/report, the summary table.
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for p in (HERE, os.path.join(REPO, "host"), REPO, os.path.join(REPO, "firmware")):
    if p not in sys.path:
        sys.path.insert(0, p)

from hilkit.plugin import *  # noqa: E402,F401,F403  (hooks and fixtures)
from hilkit.plugin import pytest_addoption, pytest_configure  # noqa: E402,F401

# Gateway entry point, after boot.py. With config "console" true the control loop runs
# in a thread and the REPL stays usable: app.status(), app.stop().
from edgefw import app

app.main()

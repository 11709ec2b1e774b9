# Gateway entry point, after boot.py. With config "console" true the control loop runs
# in a thread and the REPL stays usable: app.status(), app.stop().
try:
    from edgefw import app

    app.main()
except Exception as e:  # an OTA slot that cannot start rolls back (otaboot.broken)
    try:
        import otaboot

        otaboot.broken(e)
    except ImportError:
        pass
    raise

# Runs first at every start (ESP32 and the virtual gateway): keep it minimal so a bad
# main.py or config can never stop the board from reaching the REPL.
import gc

try:  # the OTA firmware slot (docs/ota.md); any failure boots the base firmware
    import otaboot

    otaboot.choose()
except Exception:
    pass
gc.collect()

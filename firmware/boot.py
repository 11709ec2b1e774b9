# Runs first at every start (ESP32 and the virtual gateway): keep it minimal so a bad
# main.py or config can never stop the board from reaching the REPL.
import gc

gc.collect()

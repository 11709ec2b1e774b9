"""HIL suite helpers: the DUT (virtual gateway or a real board), scenarios, the cloud
stand-in, recorders and the run summary. pytest glue lives in hilkit.plugin."""

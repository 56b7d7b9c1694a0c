"""Each specialist's in-process part: one package per specialist, its `Plugin` in the
package's `__init__`, subscribing to the probe's hooks. Nothing here imports the run
store, the router or the analysis side (`ptdiag.specialists`)."""

"""Studies: one module per notebook, all on the skeleton in :mod:`.base`; the papermill runner
(:mod:`.notebooks`) and the demo that executes them."""

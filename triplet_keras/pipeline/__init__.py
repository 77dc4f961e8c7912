"""The end-to-end run of init.py and ``triplet-keras train``: parameters, the stages (data, train,
evaluate, transfer, report), callbacks, checkpoints and plots. The top layer: it builds on all others."""

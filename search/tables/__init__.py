"""What a latency table says about networks: fetching tables, the prediction rule, calibration, fidelity
against whole networks, and cross-device cost matrices. Builds on `search.space` and `search.measurement`."""

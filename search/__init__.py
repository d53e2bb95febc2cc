"""The DNAS client, in the order a search flows.

- `search.space`: what a network is (the macro-architecture, candidate blocks, the op spec every part keys on,
  cost counting, ONNX export, the published zoo). Used by the service, the agents and the search.
- `search.measurement`: the one measurement rule every runner and every check shares (standard library only).
- `search.tables`: what a latency table says about networks (the published table's model, the typed REST
  client, the prediction rule, calibration, fidelity, cross-device comparisons).
- `search.data`: the data sets and the deterministic loader the search trains on.
- `search.dnas`: the differentiable search itself (settings, super net, trainer, decoding, outputs, retraining).
- `search.pipeline`: the whole job on one host (the quickstart), as a function returning its result; it starts
  the embedded service and a local agent, so it alone may import `profiler_service.local_server` and
  `device_agents`.

Imports run down this list and never back up: `space` and `measurement` import nothing of the others.
"""

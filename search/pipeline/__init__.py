"""The whole job on one host, as functions a test or a notebook calls: the top of the flow.

It starts what the layers below only talk to (the embedded service, a local agent), so it is the one part
of `search` that may import `profiler_service.local_server` and `device_agents`; nothing imports it but the
command line (`dnas quickstart`).
"""

"""The profiler service: devices, profiling runs, the agent job queue and versioned latency tables."""

"""Agents that lease measurement jobs from the profiler service and run them on real hardware."""

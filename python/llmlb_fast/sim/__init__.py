"""Simulated GPU nodes for benchmarks: the engine model (``engine``), hardware profiles
(``profiles``), workloads (``workloads``), discrete-event mode (``des``), live HTTP
nodes (``live``) and plots (``plots``). See docs/benchmark.md."""

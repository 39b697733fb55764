"""Simulated GPU nodes for benchmarks (see docs/benchmark.md):

- the model: ``engine`` (a vLLM-like engine), ``profiles`` (hardware), ``workloads``,
  ``monitor`` (an engine's state as the GPU metric figures a node reports);
- discrete-event mode: ``des`` (virtual time, the real core in process);
- live mode: ``node_server`` (a simulated node as a real vLLM-style HTTP server),
  ``cluster`` (``llmlb sim-cluster``), ``load_generator`` (streaming chat clients),
  ``peer_routers`` (``llmlb serve``, sglang-router and vllm-router as processes),
  ``live_benchmark`` (``llmlb bench --live``);
- output: ``report`` (table, JSON, plots of both modes), ``plots``.
"""

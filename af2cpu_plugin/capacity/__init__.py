"""Will a prediction fit, and how long will it take: memory limits and the cost model.

* :mod:`.limits`: how much memory this process may use (cgroup limit,
  MemAvailable, ``--memory-limit``).
* :mod:`.cost_model`: predicted peak RSS and time per pass for a workload,
  and the chunking the engine will choose to fit a memory limit.
"""

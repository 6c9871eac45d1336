"""accessgate as shipped, each per-request hook timed inside the running proxy.

At exit, writes the CPU and wall time per call of each hook to
`hooks.json` in the proxy's working directory; benchmarks/proxy_parts.py
prints it.  CPU is the proxy thread's own (time.thread_time), so time the
other proxy on the core takes is not counted.
"""

import json
import time

from accessgate.proxy.addon import AccessGate

HOOKS = ("requestheaders", "responseheaders", "response")


class Timed(AccessGate):
    def __init__(self) -> None:
        super().__init__()
        self.spent = {name: [0, 0, 0] for name in HOOKS}  # calls, cpu ns, wall ns

    def _timed(self, name: str, hook, flow) -> None:
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        hook(flow)
        row = self.spent[name]
        row[0] += 1
        row[1] += time.thread_time_ns() - cpu
        row[2] += time.perf_counter_ns() - wall

    def requestheaders(self, flow) -> None:
        self._timed("requestheaders", super().requestheaders, flow)

    def responseheaders(self, flow) -> None:
        self._timed("responseheaders", super().responseheaders, flow)

    def response(self, flow) -> None:
        self._timed("response", super().response, flow)

    def done(self) -> None:
        report = {
            name: {"calls": n, "cpu_us": cpu / n / 1000 if n else 0.0, "wall_us": wall / n / 1000 if n else 0.0}
            for name, (n, cpu, wall) in self.spent.items()
        }
        with open("hooks.json", "w") as out:
            json.dump(report, out)
        super().done()


addons = [Timed()]

"""A small load for rs4py-service: CONNECTIONS keep-alive connections, each posting the same
task REQUESTS times in a row and checking every answer; prints requests/s, p50 and p99.

    python3 examples/service/load.py PORT CONNECTIONS REQUESTS
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

TASK = {"float_features": [1.5, -2.5], "str_features": ["Zoë", "hello", "x"], "int_feature": 7}
EXPECTED = {"value": 20}


def main() -> None:
    port, connections, requests = (int(arg) for arg in sys.argv[1:4])
    body = json.dumps(TASK)
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        mine = []
        for _ in range(requests):
            started = time.perf_counter()
            conn.request("POST", "/score", body, {"content-type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200 or json.loads(data) != EXPECTED:
                raise SystemExit(f"unexpected answer {response.status} {data!r}")
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    if len(latencies) != connections * requests:
        raise SystemExit("some requests failed")
    p50 = latencies[len(latencies) // 2] * 1e3
    p99 = latencies[int(len(latencies) * 0.99)] * 1e3
    print(f"{len(latencies)} requests, {connections} connections: {len(latencies) / elapsed:.0f} requests/s, "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()

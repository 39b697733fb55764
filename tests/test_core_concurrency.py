"""Several threads route, complete and report metrics at once; counts stay exact."""

from __future__ import annotations

import random
import threading
from collections import Counter

from llmlb_fast import Node, Router, RouterConfig

THREADS = 4
OPS_PER_THREAD = 2500
NODE_IDS = [f"gpu{i}" for i in range(6)]
PROMPTS = ["You are a helpful assistant. " * 3 + f"question {i}" for i in range(20)]


def worker(
    router: Router,
    seed: int,
    routed: dict[str, str],
    route_counts: list[int],
    errors: list[BaseException],
) -> None:
    rng = random.Random(seed)
    open_ids: list[str] = []
    try:
        for op in range(OPS_PER_THREAD):
            draw = rng.random()
            if draw < 0.5 or not open_ids:
                request_id = f"t{seed}-{op}"
                policy = rng.choice(["llmlb", "prefix_aware", "least_request", "round_robin"])
                decision = router.route(rng.choice(PROMPTS), request_id=request_id, policy=policy)
                routed[request_id] = decision.node_id
                route_counts[seed] += 1
                open_ids.append(request_id)
            elif draw < 0.85:
                request_id = open_ids.pop(rng.randrange(len(open_ids)))
                completion = router.complete(request_id, rng.choice(["ok", "error"]))
                assert completion is not None and completion.node_id == routed[request_id]
                assert router.complete(request_id) is None
                del routed[request_id]
            else:
                router.update_metrics(
                    rng.choice(NODE_IDS),
                    kv_cache_usage=rng.random() * 0.9,
                    sm_utilization=rng.random(),
                    num_requests_running=float(rng.randrange(5)),
                )
    except BaseException as error:  # reported by the main thread
        errors.append(error)


def test_concurrent_route_complete_and_metrics_keep_exact_counts() -> None:
    router = Router(RouterConfig(char_block_size=16), [Node(i) for i in NODE_IDS])
    routed: list[dict[str, str]] = [{} for _ in range(THREADS)]
    route_counts = [0] * THREADS
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=worker, args=(router, seed, routed[seed], route_counts, errors))
        for seed in range(THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    still_open = Counter(node for per_thread in routed for node in per_thread.values())
    statuses = router.nodes()
    assert {s.id: s.in_flight for s in statuses} == {i: still_open[i] for i in NODE_IDS}
    assert all(s.in_flight >= 0 for s in statuses)
    assert router.in_flight_total == sum(still_open.values())
    for node_id in NODE_IDS:
        expected = sorted(r for t in routed for r, n in t.items() if n == node_id)
        assert router.in_flight_request_ids(node_id) == expected
    assert sum(s.routed_total for s in statuses) == sum(route_counts)

"""The load really went through every component, on every node.

check_panels.py accepts any finite sample, and many series exist at zero from start-up
(so that alerts see the first event): a panel can "return data" while its component did
nothing. This script asks Prometheus for the counts that prove the run exercised what the
dependencies and push dashboards show, and fails if one stays at zero (or, for the
per-node ones, is missing on a node).

Usage: python check_activity.py --prometheus http://127.0.0.1:PORT --nodes N [--timeout 60]
"""

import argparse
import sys
import time

from check_panels import finite_samples, get

# (what, PromQL, per node): the query must be > 0; per node, on each of the N nodes.
EXPECTED = [
    ("Redis pub/sub messages received", "sum by (instance) (herald_redis_pubsub_lag_seconds_count)", True),
    ("Redis commands timed", "sum by (instance) (herald_redis_command_duration_seconds_count)", True),
    ("every node sees the whole cluster", "min by (instance) (herald_cluster_nodes) >= 2", True),
    ("Redis reachable", "min by (instance) (herald_redis_up)", True),
    ("store appends in cluster mode (append_at)",
     'sum by (instance) (herald_store_operation_duration_seconds_count{op="append_at"})', True),
    ("WebSocket deliveries", "sum by (instance) (herald_deliveries_total)", True),
    ("Kafka records applied", "sum(herald_kafka_records_applied_total)", False),
    ("Kafka records dead-lettered", "sum(herald_kafka_records_dead_lettered_total)", False),
    ("Kafka egress produced", "sum(herald_kafka_egress_produced_total)", False),
    ("Kafka partitions assigned", "count(herald_kafka_consumer_lag) >= 3", False),
    ("APNs pushes sent", 'sum(herald_push_sent_total{provider="apns"})', False),
    ("FCM pushes sent", 'sum(herald_push_sent_total{provider="fcm"})', False),
    ("offline (fallback) pushes queued", 'sum(herald_push_queued_total{source="fallback"})', False),
    ("direct (API) pushes queued", 'sum(herald_push_queued_total{source="api"})', False),
    ("dead tokens removed", "sum(herald_push_tokens_removed_total)", False),
    ("pushes given up after retries", 'sum(herald_push_failed_total{reason="exhausted"})', False),
    ("slow client cut off (3008)", 'sum(herald_disconnects_total{code="3008"})', False),
]


def check(base, nodes):
    """-> list of (what, why) still failing."""
    failing = []
    for what, expr, per_node in EXPECTED:
        data = get(base, "/api/v1/query", query=expr)
        if per_node:
            seen = {s["metric"].get("instance"): float(s["value"][1]) for s in data["result"]}
            bad = [n for n in nodes if not seen.get(n, 0) > 0]
            if bad:
                failing.append((what, f"{expr}: zero or missing on {bad} (got {seen})"))
        elif not any(v > 0 for v in finite_samples(data)):
            failing.append((what, f"{expr}: {data['result']}"))
    return failing


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prometheus", required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    base = args.prometheus.rstrip("/")
    nodes = get(base, "/api/v1/label/instance/values", **{"match[]": 'up{job="herald"}'})
    if len(nodes) != args.nodes:
        print(f"FAILED: Prometheus scrapes {nodes}, expected {args.nodes} Herald nodes")
        return 1
    deadline = time.monotonic() + args.timeout
    while True:
        failing = check(base, nodes)
        if not failing or time.monotonic() > deadline:
            break
        time.sleep(2)
    for what, _, _ in EXPECTED:
        bad = [f for f in failing if f[0] == what]
        print(f"  {'NONE' if bad else 'ok':4} {what}")
    for what, why in failing:
        print(f"FAILED {what}: {why}")
    print(f"activity: {len(EXPECTED) - len(failing)} of {len(EXPECTED)} seen")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())

"""Every panel query of every dashboard must return data from a real Prometheus.

Reads grafana/dashboards/*.json, resolves the `node` variable the way Grafana does
(its label_values query, through the Prometheus API), substitutes $node ("All" and
then each node on its own) and $__rate_interval, runs each PromQL target as an instant
query and fails if any returns no sample with a number in it (an empty result, or only
NaN, as a histogram quantile over no observations gives). Queries are retried until
--timeout, since a fresh Prometheus needs a few scrapes before rates exist.

Also checks that Prometheus loaded the alerting rules (deploy/prometheus/alerts.yml)
and that every rule evaluates without error.

Usage: python check_panels.py --prometheus http://127.0.0.1:PORT [--rate-interval 10s] [--nodes N]
"""

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request

import yaml

import dashboards as d

LABEL_VALUES = re.compile(r"^\s*label_values\((?P<match>.+),\s*(?P<label>\w+)\s*\)\s*$")


def get(base, path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]


def promql_regex_escape(value):
    """What Grafana writes into PromQL for one selected value of a multi-value variable."""
    return re.sub(r"([\\$^*{}\[\]'+?.()|])", r"\\\\\1", value)


def node_values(base, dash):
    query = d.variable(dash, "node")["query"]
    m = LABEL_VALUES.match(query if isinstance(query, str) else query.get("query", ""))
    if not m:
        raise RuntimeError(f"node variable query is not label_values(...): {query!r}")
    return get(base, f"/api/v1/label/{m['label']}/values", **{"match[]": m["match"]})


def finite_samples(data):
    if data["resultType"] == "scalar":
        values = [data["result"][1]]
    else:
        values = [s["value"][1] for s in data["result"]]
    return [float(v) for v in values if not math.isnan(float(v))]


def run_queries(base, jobs):
    """jobs: (label, expr) -> (list of (label, expr, why) that returned no data,
    {label: what the others returned})."""
    missing, seen = [], {}
    for label, expr in jobs:
        try:
            data = get(base, "/api/v1/query", query=expr)
        except Exception as e:  # a PromQL error is a failure too, and is reported
            missing.append((label, expr, f"error: {e}"))
            continue
        vals = finite_samples(data)
        if vals:
            seen[label] = f"{len(data['result'])} series, first {vals[0]:.4g}"
        else:
            missing.append((label, expr, f"{len(data['result'])} series, no finite sample"))
    return missing, seen


def check_rules(base):
    with open(d.REPO / "deploy" / "prometheus" / "alerts.yml", encoding="utf-8") as f:
        expected = {r["alert"] for g in yaml.safe_load(f)["groups"] for r in g["rules"]}
    rules = [r for g in get(base, "/api/v1/rules")["groups"] for r in g["rules"]]
    problems = [f"rule {r['name']}: health {r.get('health')} {r.get('lastError', '')}"
                for r in rules if r.get("health") != "ok"]
    loaded = {r["name"] for r in rules}
    if loaded != expected:
        problems.append(f"rules loaded {sorted(loaded)} != alerts.yml {sorted(expected)}")
    return len(rules), problems


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prometheus", required=True)
    p.add_argument("--rate-interval", default="10s")
    p.add_argument("--timeout", type=float, default=90)
    p.add_argument("--nodes", type=int, default=1,
                   help="how many Herald nodes Prometheus scrapes; waits for all of them")
    args = p.parse_args()
    base = args.prometheus.rstrip("/")

    dashes = [(path.name, d.load(path)) for path in d.dashboard_files()]
    deadline = time.monotonic() + args.timeout
    while True:
        nodes = node_values(base, dashes[0][1])
        if len(nodes) >= args.nodes or time.monotonic() > deadline:
            break
        time.sleep(1)
    if len(nodes) < args.nodes:
        print(f"FAILED: the node variable has {nodes}, expected {args.nodes} nodes "
              "(is Prometheus scraping every Herald?)")
        return 1
    print(f"node variable: {nodes}")

    selections = [("All", ".*")] + [(n, promql_regex_escape(n)) for n in nodes]
    jobs = []
    for name, dash in dashes:
        for title, ref, expr in d.targets(dash):
            for sel_name, sel in selections:
                q = d.substitute(expr, {"node": sel, "__rate_interval": args.rate_interval})
                jobs.append((f"{name} / {title} / {ref} [node={sel_name}]", q))

    while True:
        missing, seen = run_queries(base, jobs)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)

    for label, _ in jobs:
        bad = [m for m in missing if m[0] == label]
        print(f"  {'NO DATA' if bad else 'ok':7} {label}: {bad[0][2] if bad else seen[label]}")
    for label, expr, why in missing:
        print(f"FAILED {label}\n    {expr}\n    {why}")

    n_rules, rule_problems = check_rules(base)
    for prob in rule_problems:
        print(f"FAILED {prob}")
    print(f"alert rules: {n_rules} loaded, {len(rule_problems)} problems")

    failed = len(missing) + len(rule_problems)
    print(f"panel queries: {len(jobs) - len(missing)} passed, {len(missing)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

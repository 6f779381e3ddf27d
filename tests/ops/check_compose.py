"""Cross-checks docker-compose.yml against the files it wires together.

No Docker engine runs here, so `docker compose up` is never tried; the schema of the
file is checked by `docker-compose config` in run.sh, and this script checks what a
schema cannot: that the mounted files exist, that Prometheus scrapes exactly the Herald
services on the port they listen on, that Grafana's datasource and dashboard paths
point where the volumes put them, that a stop leaves Herald time to drain, and that the
nodes run in cluster mode on the compose file's Redis, ScyllaDB (schema applied by a
`herald migrate` service first) and Kafka (topics created first), all started by a
plain `docker compose up`.

Usage: python check_compose.py
"""

import re
import sys
import tomllib

import yaml

import dashboards as d

problems = []


def expect(cond, msg):
    if not cond:
        problems.append(msg)


def load_yaml(rel):
    with open(d.REPO / rel, encoding="utf-8") as f:
        return yaml.safe_load(f)


def seconds(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(s))
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]] if m else None


def host_of(addr):
    """`redis://redis:6379` or `kafka:9092` -> the host part."""
    return re.sub(r"^\w+://", "", addr).split("@")[-1].split("/")[0].rsplit(":", 1)[0]


def depends(svc, dep, condition):
    on = svc.get("depends_on", {})
    return isinstance(on, dict) and on.get(dep, {}).get("condition") == condition


def check_cluster_mode(name, env, svc, services):
    """Redis broker, ScyllaDB store and Kafka, each a service of this file, waited for."""
    expect(env.get("HERALD_BROKER__KIND") == "redis", f"{name}: HERALD_BROKER__KIND is not redis")
    redis = host_of(env.get("HERALD_BROKER__REDIS_URL", ""))
    expect(redis in services, f"{name}: HERALD_BROKER__REDIS_URL host {redis!r} is not a service")
    expect(depends(svc, redis, "service_healthy"), f"{name}: does not wait for {redis} to be healthy")

    expect(env.get("HERALD_STORE__KIND") == "scylla", f"{name}: HERALD_STORE__KIND is not scylla")
    scylla = host_of(env.get("HERALD_STORE__SCYLLA_URI", ""))
    expect(scylla in services, f"{name}: HERALD_STORE__SCYLLA_URI host {scylla!r} is not a service")
    migrate = [n for n, s in services.items() if s.get("command") == ["migrate"]]
    expect(len(migrate) == 1, f"expected one `herald migrate` service, found {migrate}")
    for m in migrate:
        menv = services[m].get("environment", {})
        for k in ("HERALD_STORE__KIND", "HERALD_STORE__SCYLLA_URI", "HERALD_STORE__SCYLLA_KEYSPACE"):
            expect(menv.get(k) == env.get(k), f"{m}: {k} differs from {name}'s")
        expect(depends(services[m], scylla, "service_healthy"), f"{m}: does not wait for {scylla}")
        expect(depends(svc, m, "service_completed_successfully"), f"{name}: does not wait for {m}")

    kafka = {host_of(b) for b in env.get("HERALD_KAFKA__BROKERS", "").split(",") if b}
    expect(kafka and kafka <= set(services), f"{name}: HERALD_KAFKA__BROKERS {kafka} are not services")
    expect(env.get("HERALD_KAFKA__INGEST_ENABLED") == "true", f"{name}: Kafka ingest is off")
    expect(env.get("HERALD_KAFKA__EGRESS_ENABLED") == "true", f"{name}: Kafka egress is off")
    topics = set(env.get("HERALD_KAFKA__TOPICS", "").split(",")) | {
        env.get("HERALD_KAFKA__DLQ_TOPIC"), env.get("HERALD_KAFKA__EGRESS_TOPIC")}
    init = [n for n, s in services.items() if "kafka-topics.sh" in str(s.get("command", ""))]
    expect(len(init) == 1, f"expected one service creating the Kafka topics, found {init}")
    for i in init:
        created = str(services[i]["command"])
        missing = sorted(t for t in topics if not t or f"{t}:" not in created)
        expect(not missing, f"{i}: does not create the topics {missing}")
        expect(depends(svc, i, "service_completed_successfully"), f"{name}: does not wait for {i}")


def main():
    compose = load_yaml("docker-compose.yml")
    services = compose["services"]

    # Bind mounts: every host path exists; remember where each lands.
    mounts = {}
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src, dst = v.split(":")[:2]
            if src.startswith("."):
                expect((d.REPO / src).exists(), f"{name}: mounted {src} does not exist")
                mounts[dst] = d.REPO / src

    # Herald services: built from this repo, listening on the port Prometheus scrapes.
    # One-shot services of the same image (herald migrate) are not nodes.
    herald = {n: s for n, s in services.items()
              if s.get("image") == "herald:local" and not s.get("command")}
    expect(len(herald) == 2, f"expected two Herald nodes, found {sorted(herald)}")
    shutdown = seconds(tomllib.loads((d.REPO / "config" / "herald.toml").read_text())["http"]["shutdown_timeout"])
    targets = set()
    for name, svc in herald.items():
        expect(svc.get("build", {}).get("context") == ".", f"{name}: not built from this repository")
        env = svc.get("environment", {})
        port = env.get("HERALD_HTTP__ADDR", "").rsplit(":", 1)[-1]
        expect(env.get("HERALD_HTTP__ADDR", "").startswith("0.0.0.0:"), f"{name}: must listen on 0.0.0.0")
        expect(any(str(p).endswith(f":{port}") for p in svc.get("ports", [])), f"{name}: port {port} not published")
        for key in ("HERALD_API__KEY", "HERALD_AUTH__HMAC_SECRET"):
            expect(env.get(key), f"{name}: {key} not set (nodes must share it)")
        grace = seconds(svc.get("stop_grace_period", "10s"))
        expect(grace and shutdown and grace > shutdown,
               f"{name}: stop_grace_period must exceed http.shutdown_timeout ({shutdown}s)")
        store = env.get("HERALD_STORE__PATH", "")
        named = {v.split(":")[1] for v in svc.get("volumes", []) if not v.startswith(".")}
        expect(any(store.startswith(m.rstrip("/") + "/") for m in named),
               f"{name}: HERALD_STORE__PATH {store!r} is not on a named volume")
        targets.add(f"{name}:{port}")
        check_cluster_mode(name, env, svc, services)

    prom_yml = load_yaml("deploy/prometheus/prometheus.yml")
    jobs = {j["job_name"]: j for j in prom_yml["scrape_configs"]}
    expect("herald" in jobs, "prometheus.yml: no `herald` job (the alerts and dashboards select on it)")
    scraped = {t for sc in jobs.get("herald", {}).get("static_configs", []) for t in sc["targets"]}
    expect(scraped == targets, f"prometheus.yml scrapes {sorted(scraped)}, compose runs {sorted(targets)}")
    prom_dir = mounts.get("/etc/prometheus")
    expect(prom_dir and all((prom_dir / r).exists() for r in prom_yml["rule_files"]),
           "prometheus: rule files are not in the mounted /etc/prometheus")

    ds = load_yaml("grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    host, port = re.fullmatch(r"http://([\w.-]+):(\d+)", ds["url"]).groups()
    expect(host in services, f"grafana datasource host {host} is not a compose service")
    expect(any(str(p).endswith(f":{port}") for p in services.get(host, {}).get("ports", [])),
           f"grafana datasource port {port} is not {host}'s")
    expect(mounts.get("/etc/grafana/provisioning") == d.REPO / "grafana" / "provisioning",
           "grafana: provisioning is not mounted at /etc/grafana/provisioning")
    provider = load_yaml("grafana/provisioning/dashboards/herald.yml")["providers"][0]
    dash_dir = mounts.get(provider["options"]["path"])
    expect(dash_dir == d.DASHBOARD_DIR, f"grafana: {provider['options']['path']} is not grafana/dashboards")
    home = services["grafana"]["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    expect(dash_dir and (dash_dir / home.rsplit("/", 1)[-1]).exists(), f"grafana home dashboard {home} missing")

    profiled = sorted(n for n, svc in services.items() if svc.get("profiles"))
    expect(not profiled, f"services {profiled} need a --profile: `docker compose up` must start all")

    for p in problems:
        print(f"  - {p}")
    print(f"compose wiring: {'FAILED' if problems else 'ok'} ({len(services)} services)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Static checks of grafana/dashboards/*.json.

Each dashboard must validate against Grafana's dashboard JSON schema
(tests/ops/dashboard.schema.json, see SCHEMA-ORIGIN.md) and follow the house rules:
a unique uid, unique panel ids, a `node` variable over the `herald` job's instances
that every query filters on, PromQL using only known variables and only metric names
that Herald exports (listed in src/metrics.rs).

Usage: python validate_dashboards.py [DASHBOARD.json ...]   (default: all of grafana/dashboards)
"""

import re
import sys

import jsonschema

import dashboards as d

SCHEMA = d.load(d.REPO / "tests" / "ops" / "dashboard.schema.json")
METRICS_RS = (d.REPO / "src" / "metrics.rs").read_text(encoding="utf-8")
EXPORTED = set(re.findall(r'pub const \w+: &str = "(herald_\w+)";', METRICS_RS))
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
# Not from Herald: Prometheus's own series for each target.
SCRAPE_SERIES = {"up"}


def metric_names(expr):
    """Identifiers in the query that look like series names (herald_* or up)."""
    names = set(re.findall(r"\b(herald_\w+)", expr))
    if re.search(r"\bup\s*\{", expr):
        names.add("up")
    return names


def exported(name):
    if name in EXPORTED or name in SCRAPE_SERIES:
        return True
    return any(name.endswith(s) and name[: -len(s)] in EXPORTED for s in HISTOGRAM_SUFFIXES)


def branch_errors(err):
    """A panel is oneOf(Panel, RowPanel): report the errors of the branch its `type`
    selects, not the other branch's complaints."""
    if not err.context:
        return [err]
    by_branch = {}
    for e in err.context:
        by_branch.setdefault(e.relative_schema_path[0], []).append(e)
    wrong_type = {b for b, es in by_branch.items() if any(list(e.relative_path) == ["type"] for e in es)}
    chosen = [e for b, es in by_branch.items() if b not in wrong_type for e in es]
    return chosen or [jsonschema.exceptions.best_match(err.context)]


def layout_problems(panels):
    """Panels fit the 24-column grid and do not overlap."""
    out, cells = [], {}
    for p in panels:
        g = p.get("gridPos", {})
        x, y, w, h = (g.get(k, 0) for k in "xywh")
        if x + w > 24:
            out.append(f"{p.get('title')}: x + w = {x + w} > 24")
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                other = cells.setdefault((cx, cy), p.get("title"))
                if other != p.get("title"):
                    out.append(f"{p.get('title')} overlaps {other} at x={cx}, y={cy}")
                    return out
    return out


def check(path):
    dash = d.load(path)
    problems = []
    validator = jsonschema.Draft7Validator(SCHEMA)
    for err in sorted(validator.iter_errors(dash), key=lambda e: list(e.absolute_path)):
        for e in branch_errors(err):
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            problems.append(f"schema: {where}: {e.message[:200]}")

    ids = [p.get("id") for p in d.panels(dash)]
    if len(ids) != len(set(ids)):
        problems.append(f"panel ids are not unique: {ids}")

    problems += layout_problems(list(d.panels(dash)))

    node = d.variable(dash, "node")
    if node is None:
        problems.append("no `node` template variable")
    elif 'up{job="herald"}' not in str(node.get("query")):
        problems.append("the `node` variable must list the instances of up{job=\"herald\"}")

    known = {v["name"] for v in dash["templating"]["list"]} | d.BUILTINS
    n_targets = 0
    for title, ref, expr in d.targets(dash):
        n_targets += 1
        unknown = d.variables_used(expr) - known
        if unknown:
            problems.append(f"{title}/{ref}: unknown variables {sorted(unknown)}")
        if 'instance=~"$node"' not in expr:
            problems.append(f"{title}/{ref}: does not filter on instance=~\"$node\"")
        for name in metric_names(expr):
            if not exported(name):
                problems.append(f"{title}/{ref}: {name} is not a metric Herald exports")
    for p in d.panels(dash):
        if p.get("type") not in ("row", "text") and not p.get("targets"):
            problems.append(f"{p.get('title')}: a data panel without queries")
    if n_targets == 0:
        problems.append("no PromQL targets at all")
    return dash.get("uid"), n_targets, problems


def main():
    files = [d.pathlib.Path(a).resolve() for a in sys.argv[1:]] or d.dashboard_files()
    if not files:
        print(f"no dashboards in {d.DASHBOARD_DIR}")
        return 1
    if not EXPORTED:
        print("could not read the metric names from src/metrics.rs")
        return 1
    failed, uids = 0, set()
    for path in files:
        uid, n, problems = check(path)
        if uid in uids:
            problems.append(f"uid {uid!r} is used by another dashboard")
        uids.add(uid)
        status = "ok" if not problems else "FAILED"
        print(f"{path.name}: {status} (uid {uid}, {n} queries)")
        for p in problems:
            print(f"  - {p}")
        failed += bool(problems)
    print(f"dashboards: {len(files) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

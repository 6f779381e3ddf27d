"""Reading Grafana dashboards: their panels, PromQL targets and variables.

Shared by validate_dashboards.py (static checks) and check_panels.py (live queries).
"""

import json
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "grafana" / "dashboards"

# Grafana's built-in variables a Herald dashboard may use in PromQL, and nothing else.
BUILTINS = {"__rate_interval"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def dashboard_files():
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def panels(dashboard):
    """Every panel, rows included, with the panels of collapsed rows."""
    for p in dashboard.get("panels", []):
        yield p
        for inner in p.get("panels", []) if p.get("type") == "row" else []:
            yield inner


def targets(dashboard):
    """(panel title, refId, expr) for every PromQL target of every panel."""
    for p in panels(dashboard):
        for t in p.get("targets", []):
            if "expr" in t:
                yield p.get("title", "?"), t.get("refId", "?"), t["expr"]


def variables_used(expr):
    return {a or b for a, b in VARIABLE.findall(expr)}


def variable(dashboard, name):
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("name") == name:
            return v
    return None


def substitute(expr, values):
    """Replaces $name and ${name} with values[name]; KeyError for an unknown variable."""
    return VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)

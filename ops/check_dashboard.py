"""Structural check of ops/grafana/maildistiller.json (run by .ci/run): a Grafana dashboard JSON
model whose panels have unique ids, grid positions, a Prometheus datasource, and queries that
name maildistiller metrics this code base actually exports; and the same for the metrics the alert
rules in ops/prometheus/alerts.yml use (promtool checks their syntax, not that the metrics exist)."""
import json
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
dash = json.loads((root / "ops/grafana/maildistiller.json").read_text())
errors = []
for key in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
    if key not in dash:
        errors.append(f"missing top-level {key}")
source = "\n".join(p.read_text() for p in (root / "src").rglob("*.rs"))
exported = set(re.findall(r'"((?:edge|engine|dns|scan|config|geo|tls|shared|outbreak|greylist|intel)_[a-z_]+)"', source))
exported |= {f"{n}_bucket" for n in exported}
ids = set()
for p in dash.get("panels", []):
    title = p.get("title", "?")
    if p.get("id") in ids:
        errors.append(f"{title}: duplicate id")
    ids.add(p.get("id"))
    gp = p.get("gridPos", {})
    if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")):
        errors.append(f"{title}: bad gridPos")
    if p.get("datasource", {}).get("type") != "prometheus":
        errors.append(f"{title}: datasource is not prometheus")
    if not p.get("targets"):
        errors.append(f"{title}: no queries")
    for t in p.get("targets", []):
        for m in re.findall(r"maildistiller_([a-z_]+)", t.get("expr", "")):
            if m not in exported:
                errors.append(f"{title}: metric maildistiller_{m} is not exported by the code")
alerts = (root / "ops/prometheus/alerts.yml").read_text()
for m in sorted(set(re.findall(r"maildistiller_([a-z_]+)", alerts))):
    if m not in exported:
        errors.append(f"alerts.yml: metric maildistiller_{m} is not exported by the code")
for e in errors:
    print("dashboard:", e)
print(f"dashboard: {len(dash.get('panels', []))} panels, {len(errors)} problems")
sys.exit(1 if errors else 0)

"""The Grafana dashboard (dashboards/grafana/abray.json) against the metrics abray/training/distributed.py defines.

Fast and static: no Ray, no Grafana, no Prometheus. The metric names Prometheus sees are derived from the
`ray.util.metrics` calls in the source, using Ray 2.60's export naming (checked against a live export):

    Counter("abray_updates")      -> ray_abray_updates_total
    Gauge("abray_queue_depth")    -> ray_abray_queue_depth
    Histogram("abray_staleness")  -> ray_abray_staleness_bucket / _sum / _count

Ray also adds the labels SessionName, NodeAddress, WorkerId, Component and Version; the tags a metric
declares in `tag_keys` become labels of the same name.
"""

import ast
import copy
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "grafana" / "abray.json"
SOURCE = ROOT / "abray" / "training" / "distributed.py"
LIVE_TEST = ROOT / "tests" / "training" / "test_distributed.py"

KINDS = ("Counter", "Gauge", "Histogram")
SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count")}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
                    "__all", "__from", "__to"}
# PromQL words that are not metric names (functions, aggregations, operators, modifiers).
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "group",
    "count_values", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "quantile_over_time", "stddev_over_time", "abs", "ceil", "floor", "round", "clamp", "clamp_min",
    "clamp_max", "label_replace", "label_join", "vector", "scalar", "time", "absent", "resets", "changes",
}

STRING = r'"(?:[^"\\]|\\.)*"'
BRACES = r"\{((?:[^}\"]|" + STRING + r")*)\}"
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*(" + STRING + ")")


# --------------------------------------------------------------------------------------------- the code


def _literals(func: ast.AST) -> dict:
    """Names bound to literal values inside one function (`tags = ("run",)`), to resolve `tag_keys=tags`."""
    bound = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                bound[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return bound


def defined_metrics(path: Path = SOURCE) -> dict:
    """{name: (kind, tag_keys)} for every `metrics.Counter/Gauge/Histogram("name", ...)` call in the file."""
    tree = ast.parse(path.read_text())
    found = {}
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]
    for scope in scopes:
        bound = _literals(scope)
        for node in ast.walk(scope):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in KINDS
                    and ast.unparse(node.func.value).split(".")[-1] == "metrics"):
                continue
            assert node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str), \
                f"line {node.lineno}: the metric name must be a string literal for this test to read it"
            tags = ()
            for kw in node.keywords:
                if kw.arg == "tag_keys":
                    if isinstance(kw.value, ast.Name):
                        assert kw.value.id in bound, f"line {node.lineno}: cannot resolve tag_keys={kw.value.id}"
                        tags = tuple(bound[kw.value.id])
                    else:
                        tags = tuple(ast.literal_eval(kw.value))
            found[node.args[0].value] = (node.func.attr, tags)
    return found


def prometheus_names(name: str, kind: str) -> set:
    return {f"ray_{name}{suffix}" for suffix in SUFFIXES[kind]}


# ---------------------------------------------------------------------------------------- the dashboard


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside it
    return out


def targets(dashboard: dict) -> list:
    """(where, target) for every query of every panel."""
    return [(f"panel {p['title']!r} query {t.get('refId')}", t)
            for p in all_panels(dashboard) if p["type"] != "row" for t in p.get("targets", [])]


def variable_queries(dashboard: dict) -> list:
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']!r}", q))
    return out


def metric_tokens(expr: str) -> list:
    """Identifiers in a PromQL expression that are not PromQL words: the metric names it reads."""
    variable = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", expr, re.S)  # (series, label)
    rest = re.sub(STRING, '""', variable.group(1) if variable else expr)
    rest = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", rest)
    rest = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rest)
    return [t for t in re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*", rest) if t not in PROMQL_WORDS]


def selectors(expr: str, metric: str) -> list:
    """The label matchers [(label, op, value)] of every occurrence of `metric`; None where it has no braces."""
    out = []
    for m in re.finditer(r"(?<![\w:])" + re.escape(metric) + r"(?![\w:])(\s*" + BRACES + ")?", expr):
        if m.group(1) is None:
            out.append(None)
        else:
            out.append([(label, op, json.loads(value)) for label, op, value in MATCHER.findall(m.group(2))])
    return out


def has(matchers, label: str, variable: str) -> bool:
    return any(lb == label and op == "=~" and v in (f"${variable}", f"${{{variable}}}") for lb, op, v in matchers)


def metric_problems(dashboard: dict, defined: dict) -> list:
    """Every way the dashboard's queries disagree with the metrics the code defines."""
    allowed = {}
    for name, (kind, _) in defined.items():
        for prom in prometheus_names(name, kind):
            allowed[prom] = name
    problems, used = [], set()
    panel_queries = [(w, t["expr"]) for w, t in targets(dashboard)]
    for where, expr in panel_queries + variable_queries(dashboard):
        for token in metric_tokens(expr):
            if token not in allowed:
                problems.append(f"{where}: {token!r} is not a metric abray/training/distributed.py exports "
                                f"(known: {sorted(allowed)})")
            elif (where, expr) in panel_queries:  # a variable's query shows nothing
                used.add(allowed[token])
    for name in sorted(set(defined) - used):
        problems.append(f"metric {name!r} ({defined[name][0]}) is defined in the code but no panel shows it")
    return problems


def filter_problems(dashboard: dict, defined: dict) -> list:
    """Every panel query reads each metric with SessionName=~"$SessionName", and with run=~"$run" exactly
    when the metric has a `run` tag (filtering a metric without that label by a chosen run would blank it)."""
    problems = []
    by_prom = {prom: tags for name, (kind, tags) in defined.items() for prom in prometheus_names(name, kind)}
    for where, target in targets(dashboard):
        expr = target["expr"]
        names = set(metric_tokens(expr))
        if not names:
            problems.append(f"{where}: reads no metric: {expr!r}")
        for metric in sorted(names & set(by_prom)):
            for matchers in selectors(expr, metric):
                if matchers is None or not has(matchers, "SessionName", "SessionName"):
                    problems.append(f'{where}: {metric} is not filtered by SessionName=~"$SessionName"')
                    continue
                filters_run = any(lb == "run" for lb, _, _ in matchers)
                if "run" in by_prom[metric] and not has(matchers, "run", "run"):
                    problems.append(f'{where}: {metric} has a run tag but is not filtered by run=~"$run"')
                if "run" not in by_prom[metric] and filters_run:
                    problems.append(f"{where}: {metric} has no run tag, so a run filter would hide it")
    return problems


# ---------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def dashboard():
    return load()


@pytest.fixture(scope="module")
def defined():
    found = defined_metrics()
    assert found, "found no ray.util.metrics definitions in abray/training/distributed.py"
    return found


def test_source_defines_the_metrics_we_expect_to_read(defined):
    # Guards the AST reader itself: if this breaks, the code changed and the dashboard needs a look.
    assert defined["abray_updates"][0] == "Counter"
    assert defined["abray_staleness"][0] == "Histogram"
    assert defined["abray_queue_depth"] == ("Gauge", ("run",))
    assert defined["abray_worker_busy_fraction"] == ("Gauge", ("run", "worker"))


def test_dashboard_identity_and_layout(dashboard):
    assert dashboard["uid"] == "abray"
    assert dashboard["title"] == "abray: parameter server and workers"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    for p in panels:
        if p["type"] != "row":
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(refs) == len(set(refs)), f"{p['title']!r}: refIds {refs}"


def test_datasource_is_a_variable_and_every_query_uses_it(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus"

    def uses_variable(value):
        uid = value.get("uid") if isinstance(value, dict) else value
        return uid in ("$datasource", "${datasource}") and (not isinstance(value, dict)
                                                            or value.get("type") in (None, "prometheus"))

    for p in all_panels(dashboard):
        if p["type"] != "row":
            assert uses_variable(p.get("datasource")), f"panel {p['title']!r}: datasource {p.get('datasource')}"
    for where, t in targets(dashboard):
        assert uses_variable(t.get("datasource", "${datasource}")), f"{where}: datasource {t['datasource']}"
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            assert uses_variable(var["datasource"]), f"variable {var['name']!r}: datasource {var['datasource']}"


def test_session_and_run_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name, label in (("SessionName", "SessionName"), ("run", "run")):
        var = variables.get(name)
        assert var and var["type"] == "query", f"no query variable {name!r}"
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        assert re.fullmatch(r"label_values\(.+,\s*" + label + r"\)", query), query
    run_query = variables["run"]["query"]["query"]
    assert 'SessionName=~"$SessionName"' in run_query, "the run list should follow the chosen session"


def test_every_query_filters_by_session_and_by_run_where_the_metric_has_one(dashboard, defined):
    assert filter_problems(dashboard, defined) == []


def test_metric_names_match_the_code_both_ways(dashboard, defined):
    assert metric_problems(dashboard, defined) == []


def test_every_variable_a_query_uses_exists(dashboard):
    names = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
    texts = [(w, t["expr"]) for w, t in targets(dashboard)] + variable_queries(dashboard)
    texts += [(f"panel {p['title']!r} legend", t.get("legendFormat", ""))
              for p in all_panels(dashboard) for t in p.get("targets", [])]
    for where, text in texts:
        for var in re.findall(r"\$\{?(\w+)", text):
            assert var in names, f"{where}: unknown variable ${var}"


def test_the_checks_catch_a_typo_a_missing_filter_and_an_unshown_metric(dashboard, defined):
    typo = copy.deepcopy(dashboard)
    target = next(t for _, t in targets(typo) if "ray_abray_queue_depth" in t["expr"])
    target["expr"] = target["expr"].replace("ray_abray_queue_depth", "ray_abray_queue_dept")
    problems = metric_problems(typo, defined)
    assert any("'ray_abray_queue_dept' is not a metric" in p for p in problems), problems
    assert any("'abray_queue_depth' (Gauge) is defined in the code but no panel shows it" in p for p in problems)

    wrong_prefix = copy.deepcopy(dashboard)
    target = next(t for _, t in targets(wrong_prefix) if "ray_abray_train_loss" in t["expr"])
    target["expr"] = target["expr"].replace("ray_abray_train_loss", "abray_train_loss")
    assert any("'abray_train_loss' is not a metric" in p for p in metric_problems(wrong_prefix, defined))

    bare_counter = copy.deepcopy(dashboard)  # Ray exports the counter only with _total
    target = next(t for _, t in targets(bare_counter) if "ray_abray_updates_total" in t["expr"])
    target["expr"] = target["expr"].replace("ray_abray_updates_total", "ray_abray_updates")
    assert any("'ray_abray_updates' is not a metric" in p for p in metric_problems(bare_counter, defined))

    unfiltered = copy.deepcopy(dashboard)
    target = next(t for _, t in targets(unfiltered) if "ray_abray_staleness_count" in t["expr"])
    target["expr"] = target["expr"].replace('ray_abray_staleness_count{SessionName=~"$SessionName", ',
                                            "ray_abray_staleness_count{")
    assert any("ray_abray_staleness_count is not filtered by SessionName" in p
               for p in filter_problems(unfiltered, defined))

    no_run = copy.deepcopy(dashboard)
    target = next(t for _, t in targets(no_run) if "ray_abray_worker_busy_fraction" in t["expr"])
    target["expr"] = target["expr"].replace(', run=~"$run"', "")
    assert any("has a run tag but is not filtered" in p for p in filter_problems(no_run, defined))


def test_naming_agrees_with_the_live_prometheus_test(defined):
    """tests/training/test_distributed.py::test_metrics_reach_prometheus scrapes Ray's real export for one name per
    metric; the naming used here must produce exactly those names."""
    tree = ast.parse(LIVE_TEST.read_text())
    wanted = None
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef) and func.name == "test_metrics_reach_prometheus":
            for node in ast.walk(func):
                if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                        and node.targets[0].id == "wanted"):
                    wanted = ast.literal_eval(node.value)
    assert wanted is not None, "test_metrics_reach_prometheus no longer lists the names it scrapes for"
    derived = {name: prometheus_names(name, kind) for name, (kind, _) in defined.items()}
    every = set().union(*derived.values())
    assert set(wanted) <= every, set(wanted) - every
    assert all(names & set(wanted) for names in derived.values()), "a metric the live test does not scrape for"

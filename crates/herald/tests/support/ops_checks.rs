//! Pure checkers behind `tests/ops_kit.rs` (no I/O): PromQL metric names, the Prometheus text
//! format, the metrics table of docs/operations.md, the Grafana dashboard's and the alert rules'
//! structure, `.dockerignore` matching and Dockerfile / systemd unit parsing. Each is exercised on
//! a broken input in `ops_kit.rs`, so a checker that accepts everything fails its own test.

use std::collections::{BTreeMap, BTreeSet};

/// Names Prometheus itself makes (not in Herald's `/metrics`): `up` for every scrape target,
/// `probe_success` from the blackbox exporter probing `/readyz`.
pub const PROMETHEUS_GENERATED: [&str; 2] = ["up", "probe_success"];

/// PromQL aggregation operators: an identifier that is one is never a metric, even when `by`/
/// `without` comes between it and its parenthesis.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other keywords and literals.
const KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// One metric a PromQL expression reads: its name and its label matchers (`{…}` without the
/// braces; empty when it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub name: String,
    pub matchers: String,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index after the string literal that starts at `i` (`"…"`, `'…'` or `` `…` ``).
fn skip_string(s: &[char], i: usize) -> usize {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() {
        if s[j] == '\\' && quote != '`' {
            j += 2;
            continue;
        }
        if s[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    j
}

/// The index after the bracket group that opens at `i` (strings inside are skipped).
fn skip_group(s: &[char], i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < s.len() {
        match s[j] {
            '"' | '\'' | '`' => {
                j = skip_string(s, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

fn skip_space(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

/// The metrics a PromQL expression reads, in order: identifiers that are not functions,
/// aggregations, keywords, label names (inside `{…}`, or the lists after `by`, `without`, `on`,
/// `ignoring`, `group_left`, `group_right`), numbers, durations, strings or Grafana variables
/// (`$instance`, `${DS}`, `$__rate_interval`). A selector written only as `{__name__="…"}` is not
/// seen; none of ours is.
pub fn promql_selectors(expr: &str) -> Vec<Selector> {
    let s: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i);
        } else if c == '{' {
            i = skip_group(&s, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&s, i, '[', ']');
        } else if c == '$' {
            i += 1;
            if i < s.len() && s[i] == '{' {
                i = skip_group(&s, i, '{', '}');
            } else {
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations (`0.99`, `1e3`, `5m`, `1h30m`).
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let next = skip_space(&s, i);
            if LABEL_LISTS.contains(&lower.as_str()) {
                if s.get(next) == Some(&'(') {
                    i = skip_group(&s, next, '(', ')');
                }
            } else if AGGREGATIONS.contains(&lower.as_str())
                || KEYWORDS.contains(&lower.as_str())
                || s.get(next) == Some(&'(')
            {
                // An aggregation, a keyword, or a function call.
            } else {
                let matchers = if s.get(next) == Some(&'{') {
                    let end = skip_group(&s, next, '{', '}');
                    i = end;
                    s[next + 1..end.saturating_sub(1)].iter().collect()
                } else {
                    String::new()
                };
                out.push(Selector {
                    name: word,
                    matchers,
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The metric names of [`promql_selectors`].
pub fn promql_metrics(expr: &str) -> BTreeSet<String> {
    promql_selectors(expr).into_iter().map(|s| s.name).collect()
}

/// The metric a Grafana variable query reads: `label_values(SELECTOR, LABEL)` → the selector's
/// metric; any other query is PromQL.
pub fn variable_query_metrics(query: &str) -> BTreeSet<String> {
    let q = query.trim();
    if let Some(args) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match args.rsplit_once(',') {
            Some((selector, _label)) => promql_metrics(selector),
            // `label_values(LABEL)`: no metric.
            None => BTreeSet::new(),
        };
    }
    promql_metrics(q)
}

/// Every PromQL expression of a Grafana dashboard: panel targets (rows' nested panels too) and
/// query variables, as `(where, expression)`.
pub fn dashboard_queries(dash: &serde_json::Value) -> Vec<(String, String)> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {title:?}"), e.to_owned()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    out
}

/// The metrics read by a dashboard: its panels' expressions and its query variables.
pub fn dashboard_metrics(dash: &serde_json::Value) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = dashboard_queries(dash)
        .iter()
        .flat_map(|(_, e)| promql_metrics(e))
        .collect();
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .or_else(|| v["definition"].as_str())
                .unwrap_or("");
            names.extend(variable_query_metrics(q));
        }
    }
    names
}

/// What is wrong with a dashboard's structure: schema version, the data source and `instance`
/// variables, panels on that data source with expressions, unique ids, and every Herald metric
/// filtered by the selected nodes (`instance=~"$instance"`).
pub fn dashboard_problems(dash: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    if dash["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problems.push(format!(
            "schemaVersion {} (want ≥ 36)",
            dash["schemaVersion"]
        ));
    }
    let vars = dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
    match var("DS_PROMETHEUS") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => problems.push("no `DS_PROMETHEUS` data source variable of type prometheus".into()),
    }
    match var("instance") {
        Some(v) if v["type"] == "query" => {}
        _ => problems.push("no `instance` query variable".into()),
    }
    let mut ids = BTreeSet::new();
    let mut stack: Vec<serde_json::Value> = dash["panels"].as_array().cloned().unwrap_or_default();
    while let Some(p) = stack.pop() {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        if !ids.insert(p["id"].to_string()) {
            problems.push(format!("panel {title:?}: duplicate id {}", p["id"]));
        }
        if p["gridPos"]["w"].as_u64().is_none() {
            problems.push(format!("panel {title:?}: no gridPos"));
        }
        stack.extend(p["panels"].as_array().cloned().unwrap_or_default());
        if p["type"] == "row" {
            continue;
        }
        if p["datasource"]["uid"] != "${DS_PROMETHEUS}" {
            problems.push(format!("panel {title:?}: not on ${{DS_PROMETHEUS}}"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no targets"));
        }
        for t in targets {
            let Some(expr) = t["expr"].as_str() else {
                problems.push(format!("panel {title:?}: a target without expr"));
                continue;
            };
            for sel in promql_selectors(expr) {
                let herald = sel.name.starts_with("herald_");
                let generated = PROMETHEUS_GENERATED.contains(&sel.name.as_str());
                if (herald || generated) && !sel.matchers.contains("instance=~\"$instance\"") {
                    problems.push(format!(
                        "panel {title:?}: {} is not filtered by instance=~\"$instance\"",
                        sel.name
                    ));
                }
            }
        }
    }
    problems
}

/// One alerting rule of a Prometheus rules file.
#[derive(Debug, Clone)]
pub struct AlertRule {
    pub alert: String,
    pub expr: String,
}

/// The alerting rules of a rules file, and what is wrong with its structure: `groups` with a
/// `name` and `rules`, each rule with `alert`, `expr`, `for`, `labels.severity` (`critical`,
/// `warning` or `info`) and `annotations.summary` and `description`; alert names unique.
pub fn alert_rules(yaml: &str) -> Result<(Vec<AlertRule>, Vec<String>), String> {
    let doc: serde_json::Value = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    let groups = doc["groups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        problems.push("no groups".to_owned());
    }
    let mut names = BTreeSet::new();
    for g in groups {
        let group = g["name"].as_str().unwrap_or("").to_owned();
        if group.is_empty() {
            problems.push("a group without a name".into());
        }
        let list = g["rules"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            problems.push(format!("group {group:?}: no rules"));
        }
        for r in list {
            let Some(alert) = r["alert"].as_str() else {
                problems.push(format!("group {group:?}: a rule without `alert`: {r}"));
                continue;
            };
            let mut need = |ok: bool, what: &str| {
                if !ok {
                    problems.push(format!("{alert}: {what}"));
                }
            };
            need(names.insert(alert.to_owned()), "duplicate alert name");
            let expr = r["expr"].as_str().unwrap_or("").trim().to_owned();
            need(!expr.is_empty(), "no expr");
            need(r["for"].as_str().is_some(), "no `for`");
            need(
                matches!(
                    r["labels"]["severity"].as_str(),
                    Some("critical" | "warning" | "info")
                ),
                "labels.severity is not critical, warning or info",
            );
            need(
                r["annotations"]["summary"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "no annotations.summary",
            );
            need(
                r["annotations"]["description"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "no annotations.description",
            );
            rules.push(AlertRule {
                alert: alert.to_owned(),
                expr,
            });
        }
    }
    Ok((rules, problems))
}

/// Sample names in the Prometheus text format (`name{labels} value`; histograms appear as
/// `NAME_bucket`, `NAME_sum`, `NAME_count`).
pub fn exposed_series(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let end = l.find(|c: char| !is_ident(c)).unwrap_or(l.len());
            (end > 0).then(|| l[..end].to_owned())
        })
        .collect()
}

/// The value of the first sample of `name` (any labels) in the Prometheus text format.
pub fn sample_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    })
}

/// The metrics table of docs/operations.md: name → type.
pub fn documented_metrics(operations_md: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut in_section = false;
    for line in operations_md.lines() {
        if line.starts_with("## ") {
            in_section = line.trim() == "## Metrics";
            continue;
        }
        if !in_section {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `name` | type | labels | meaning |" → ["", "`name`", "type", …]
        if let (Some(name), Some(kind)) = (cells.get(1), cells.get(2))
            && let Some(name) = name.strip_prefix('`').and_then(|n| n.strip_suffix('`'))
        {
            out.insert(name.to_owned(), (*kind).to_owned());
        }
    }
    out
}

/// The documented metric behind a series name: itself, or for `NAME_bucket`/`_sum`/`_count` the
/// histogram `NAME`.
pub fn documented_as(series: &str, documented: &BTreeMap<String, String>) -> Option<String> {
    if documented.contains_key(series) {
        return Some(series.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        (documented.get(base).map(String::as_str) == Some("histogram")).then(|| base.to_owned())
    })
}

/// Metric names recorded in the source with `metrics::counter!("NAME"`, `gauge!` or
/// `histogram!`, from the given source texts.
pub fn recorded_in_source<'a>(sources: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for src in sources {
        for macro_ in ["counter!(", "gauge!(", "histogram!("] {
            let mut rest = src;
            while let Some(at) = rest.find(macro_) {
                rest = &rest[at + macro_.len()..];
                let arg = rest.trim_start();
                if let Some(name) = arg.strip_prefix('"').and_then(|a| a.split('"').next()) {
                    out.insert(name.to_owned());
                }
            }
        }
    }
    out
}

/// What is wrong with the metric names of queries: each must be generated by Prometheus
/// ([`PROMETHEUS_GENERATED`]) or be documented in docs/operations.md, and be exposed by
/// `/metrics` (`exposed`) — or, for the names in `not_caused` (registered only after an event
/// the test cannot cause), be recorded in the source (`recorded`).
pub fn metric_problems(
    used: &BTreeSet<String>,
    exposed: &BTreeSet<String>,
    documented: &BTreeMap<String, String>,
    not_caused: &BTreeSet<String>,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for name in used {
        if PROMETHEUS_GENERATED.contains(&name.as_str()) {
            continue;
        }
        let doc = documented_as(name, documented);
        if doc.is_none() {
            problems.push(format!(
                "{name}: not in the metrics table of docs/operations.md"
            ));
        }
        if exposed.contains(name) {
            continue;
        }
        let base = doc.unwrap_or_else(|| name.clone());
        if not_caused.contains(&base) {
            if !recorded.contains(&base) {
                problems.push(format!("{name}: not recorded anywhere in crates/*/src"));
            }
        } else {
            problems.push(format!("{name}: not exposed by /metrics"));
        }
    }
    problems
}

/// A `.dockerignore`: patterns in order, the last that matches a path decides (`!` re-includes).
pub struct DockerIgnore {
    rules: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> DockerIgnore {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (include, pat) = match l.strip_prefix('!') {
                    Some(p) => (true, p.trim()),
                    None => (false, l),
                };
                let parts = pat
                    .trim_start_matches('/')
                    .trim_end_matches('/')
                    .split('/')
                    .filter(|p| !p.is_empty() && *p != ".")
                    .map(str::to_owned)
                    .collect();
                (include, parts)
            })
            .collect();
        DockerIgnore { rules }
    }

    /// Whether the build context leaves `path` (relative, `/`-separated) out. A pattern that
    /// matches a parent directory matches everything under it, as Docker's does.
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut excluded = false;
        for (include, pat) in &self.rules {
            let hit = (1..=parts.len()).any(|n| glob_path(pat, &parts[..n]));
            if hit {
                excluded = !include;
            }
        }
        excluded
    }
}

/// `pat` (segments, `**` = any number of them) matches exactly `path`.
fn glob_path(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| glob_path(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((seg, more)) => glob_segment(first, seg) && glob_path(rest, more),
            None => false,
        },
    }
}

/// One path segment against a pattern with `*` and `?`.
fn glob_segment(pat: &str, seg: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pat.chars().collect(), seg.chars().collect());
    fn go(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|k| go(rest, &s[k..])),
            Some(('?', rest)) => !s.is_empty() && go(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    go(&p, &s)
}

/// One Dockerfile instruction: its keyword (upper case) and the rest of the line, continuation
/// lines joined, comments and parser directives dropped.
#[derive(Debug, Clone)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
}

pub fn dockerfile(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let joined = std::mem::take(&mut current);
        let (kw, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((&joined, ""));
        out.push(Instruction {
            keyword: kw.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
    }
    out
}

/// The stages of a parsed Dockerfile: each `FROM` and the instructions up to the next one.
pub fn stages(instructions: &[Instruction]) -> Vec<Vec<Instruction>> {
    let mut out: Vec<Vec<Instruction>> = Vec::new();
    for i in instructions {
        if i.keyword == "FROM" {
            out.push(Vec::new());
        }
        if let Some(stage) = out.last_mut() {
            stage.push(i.clone());
        }
    }
    out
}

/// A systemd unit: `(section, key)` → values in order (a key may repeat).
pub fn systemd_unit(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        if let Some((k, v)) = t.split_once('=') {
            out.entry((section.clone(), k.trim().to_owned()))
                .or_default()
                .push(v.trim().to_owned());
        }
    }
    out
}

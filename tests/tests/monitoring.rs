//! The Prometheus alerting rules shipped for operators
//! (`lb-userspace/monitoring/alerts.yml`): valid for Prometheus
//! (`promtool check rules`), and each alert fires on its situation, only
//! after its `for`, and not on its neighbours (`promtool test rules` with
//! `alerts_test.yml`). That they name only exported metrics is a unit test
//! of `api::http::metrics`.

use std::{path::PathBuf, process::Command};

fn monitoring() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lb-userspace/monitoring")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring())
        .output()
        .expect("promtool (Debian package prometheus, installed by cargo xtask setup)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    said
}

#[test]
fn the_alerting_rules_are_valid() {
    let said = promtool(&["check", "rules", "alerts.yml"]);
    assert!(said.contains("SUCCESS: 16 rules found"), "{said}");
}

#[test]
fn each_alert_fires_on_its_situation_and_only_then() {
    let said = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");
}

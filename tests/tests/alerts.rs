//! The shipped Prometheus alert rules (monitoring/alerts.yml): valid for `promtool check
//! rules`, firing as intended in `promtool test rules` (each with its healthy twin quiet), and
//! naming only metrics mcp-edge exports.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool (Debian package prometheus) runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_rules_are_valid_and_fire_when_they_should() {
    assert!(promtool(&["check", "rules", "alerts.yml"]).contains("SUCCESS: 8 rules found"));
    assert!(promtool(&["test", "rules", "alerts_test.yml"]).contains("SUCCESS"));
}

#[test]
fn the_rules_name_only_metrics_mcp_edge_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = std::fs::read_to_string(root.join("monitoring/alerts.yml")).unwrap();
    let source = std::fs::read_to_string(root.join("proxy/src/metrics.rs")).unwrap();
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("mcp_edge_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        let family = name.trim_start_matches("mcp_edge_");
        assert!(
            source.contains(&format!("\"{family}\"")),
            "{name} is used by an alert but not registered in proxy/src/metrics.rs"
        );
    }
}

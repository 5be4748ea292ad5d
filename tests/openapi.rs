//! The HTTP API's OpenAPI document (issue 15, part 7): the committed `docs/openapi.json` is the
//! one the code generates and the one the server serves; then a schema-driven fuzzer
//! (schemathesis, from PyPI, installed by `scripts/setup.sh` into `.deps/schemathesis-venv`) runs
//! every operation against the real server (the daemon's graph with its rules, recorder, sled
//! store and API, events recorded) with an admin token: no answer may be a 5xx, and every answer's
//! status, content type and body must be what the document says.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::api_site::{start, wait_events, walk_across};

fn schemathesis() -> PathBuf {
    let bin =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/schemathesis-venv/bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup.sh (it installs schemathesis from PyPI)",
        bin.display()
    );
    bin
}

#[test]
fn the_committed_document_is_the_generated_and_served_one() {
    let generated = kinderwatch::api::openapi::document();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert_eq!(
        committed.trim_end(),
        generated.trim_end(),
        "docs/openapi.json is stale: run `cargo run -- openapi > docs/openapi.json`"
    );
    let h = start();
    let (status, served, _) = common::api_site::call(&h, "GET", "/api/v1/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(served).unwrap(), generated);
    // Every route the router serves is in the document (the console's pages are not API).
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/healthz",
        "/api/v1/events",
        "/api/v1/events/{id}",
        "/api/v1/events/{id}/snapshot.jpg",
        "/api/v1/events/stream",
        "/api/v1/cameras",
        "/api/v1/cameras/{id}/frame.jpg",
        "/api/v1/cameras/{id}/perimeter",
        "/api/v1/rules",
        "/api/v1/rules/{id}/arm",
        "/api/v1/rules/{id}/disarm",
        "/api/v1/store",
        "/api/v1/audit",
        "/api/v1/outbox/dead-letters",
        "/api/v1/outbox/dead-letters/{id}/requeue",
        "/api/v1/outbox/dead-letters/requeue",
        "/metrics",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
    assert_eq!(paths.len(), 18, "a documented path the test does not know");
}

#[test]
fn a_schema_driven_fuzzer_finds_no_server_error_and_no_undocumented_answer() {
    let st = schemathesis();
    let h = start();
    walk_across(&h);
    wait_events(&h, "kind=line_crossed", 1);
    let report = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    let _ = std::fs::remove_dir_all(&report);
    let base = h.base.clone();
    let admin = h.admin.clone();
    // The fuzzer is a blocking process; the daemon runs on the harness's runtime meanwhile.
    let out = Command::new(&st)
        .args([
            "run",
            &format!("{base}/api/v1/openapi.json"),
            "--url",
            &base,
            "-H",
            &format!("Authorization: Bearer {admin}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            // An endless stream of server-sent events: its one answer is checked in tests/console.rs.
            "--exclude-path",
            "/api/v1/events/stream",
            "--max-examples",
            "40",
            "--request-timeout",
            "10",
            "--generation-deterministic",
            "--report",
            "junit",
            "--report-dir",
            report.to_str().unwrap(),
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // It ran the operations (not an empty selection).
    assert!(text.contains("passed"), "{text}");
    // The token never leaks into the daemon's logs through the fuzzer's requests.
    assert!(!common::captured_logs().contains(&admin));
}

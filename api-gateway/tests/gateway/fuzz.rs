//! Hostile input at the gateway: `scripts/fuzz-gateway` runs schemathesis
//! against a real gateway on a seeded database. Generated from the gateway's
//! own OpenAPI document, valid and invalid requests alike must never get a
//! 5xx, and every answer must match the document (status, content type,
//! headers, body schema); invalid input must be refused and valid input
//! accepted.

use std::time::Instant;

use harness::{TestBroker, TestDb};

use crate::helpers::{Amo, SeedRecord, insert_receipt, insert_records, start_gateway_with};

#[tokio::test]
async fn schemathesis_finds_no_failure_in_the_public_api() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let _amo = Amo::connect(&broker).await;
    let guid = "{3550f703-e582-4d05-9a08-453d09bdfdc6}";
    let mut records: Vec<SeedRecord> = (0..20u32)
        .map(|n| SeedRecord::registered("a@b", &format!("{n:064x}")))
        .collect();
    let mut revoked = SeedRecord::registered(guid, &"ab".repeat(32));
    revoked.status = "revoked";
    revoked.registered_at = None;
    records.push(revoked);
    insert_records(&db.owner, &records).await;
    insert_receipt(&db.owner, "w-1", "applied", None, "2026-11-22T10:00:00Z").await;
    insert_receipt(
        &db.owner,
        "w-2",
        "rejected",
        Some("invalid_json: …"),
        "2026-11-22T10:00:00Z",
    )
    .await;
    let gw = start_gateway_with(
        &[db.url_as("addonreg_gateway")],
        broker.prefix.as_str(),
        &[("ADDONREG_LOG", "warn".to_string())],
    )
    .await;

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fuzz-gateway");
    let started = Instant::now();
    let output = tokio::process::Command::new(&script)
        .args([gw.public.as_str(), "--max-examples", "100"])
        .output()
        .await
        .expect("run scripts/fuzz-gateway");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found failures ({:?}):\n{report}",
        output.status
    );
    eprintln!("fuzz-gateway passed in {:?}", started.elapsed());
    // Known, left to telemetry: warp logs a client's malformed request head
    // ("server connection error: hyper::Error(Parse(..))") at error level,
    // Type "warp::server::run". Anything else at error is a gateway failure.
    let errors: Vec<String> = gw
        .process
        .stdout_lines()
        .into_iter()
        .filter(|l| l.contains("\"Severity\":3") || l.contains("panicked"))
        .filter(|l| !l.contains("\"Type\":\"warp::server::run\""))
        .collect();
    assert!(errors.is_empty(), "the gateway logged errors: {errors:?}");
}

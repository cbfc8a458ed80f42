//! Per-request metrics on the admin port and `request.summary` log lines.

use std::time::Duration;

use harness::TestDb;

use crate::helpers::{
    SeedRecord, eventually, insert_records, metric, start_gateway, start_gateway_with,
};

const EMAIL_ID: &str = "uBlock0@raymondhill.net";
const RECORD_ROUTE: &str = "/v1/addons/{addon_id}/hashes/{sha256}";

fn sha(n: u32) -> String {
    format!("{n:064x}")
}

#[tokio::test]
async fn requests_are_counted_timed_and_summarised_by_route() {
    let db = TestDb::new().await;
    insert_records(&db.owner, &[SeedRecord::registered(EMAIL_ID, &sha(1))]).await;
    let gw = start_gateway(&[db.url_as("addonreg_gateway")], "test-observability").await;
    let base = format!("{}/v1/addons/{EMAIL_ID}/hashes", gw.public);
    for url in [
        format!("{base}/{}", sha(1)),
        format!("{base}/{}", sha(1)),
        format!("{base}/{}", sha(2)),
        format!("{base}/nothex"),
    ] {
        reqwest::get(url).await.expect("GET");
    }
    let client = reqwest::Client::new();
    let status = client
        .delete(format!("{}/v1/lookups", gw.public))
        .send()
        .await
        .expect("DELETE")
        .status();
    assert_eq!(status, 405);

    let counted = |status: u16| {
        format!("addonreg_gateway_requests_total{{route=\"{RECORD_ROUTE}\",status=\"{status}\"}}")
    };
    assert_eq!(metric(&gw, &counted(200)).await, 2.0);
    assert_eq!(metric(&gw, &counted(404)).await, 1.0);
    assert_eq!(metric(&gw, &counted(400)).await, 1.0);
    assert_eq!(
        metric(
            &gw,
            "addonreg_gateway_requests_total{route=\"/v1/lookups\",status=\"405\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            &format!("addonreg_gateway_request_duration_seconds_count{{route=\"{RECORD_ROUTE}\"}}")
        )
        .await,
        4.0
    );
    let text = reqwest::get(format!("{}/metrics", gw.admin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    for le in ["0.00005", "1", "+Inf"] {
        let bucket = format!(
            "addonreg_gateway_request_duration_seconds_bucket{{route=\"{RECORD_ROUTE}\",le=\"{le}\"}} "
        );
        assert!(text.contains(&bucket), "no {bucket} in {text}");
    }
    assert!(text.contains(&format!("{} 4\n", &format!(
        "addonreg_gateway_request_duration_seconds_bucket{{route=\"{RECORD_ROUTE}\",le=\"+Inf\"}}"
    ))));

    // One summary line per request, with the route pattern and no id.
    eventually(Duration::from_secs(5), "summary lines", || async {
        summaries(&gw.process).len() >= 5
    })
    .await;
    let lines = summaries(&gw.process);
    for line in &lines {
        let fields = &line["Fields"];
        assert!(!line.to_string().contains(&sha(1)), "{line}");
        assert!(!line.to_string().contains("raymondhill"), "{line}");
        assert!(fields["t"].is_number(), "{line}");
        assert!(fields["status"].is_number(), "{line}");
        assert!(fields["method"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l["Fields"]["path"] == RECORD_ROUTE
        && l["Fields"]["status"] == 404
        && l["Fields"]["method"] == "GET"));
    assert!(lines.iter().any(|l| l["Fields"]["path"] == "/v1/lookups"
        && l["Fields"]["status"] == 405
        && l["Fields"]["method"] == "DELETE"));
}

fn summaries(process: &harness::TestProcess) -> Vec<serde_json::Value> {
    process
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["Type"] == "request.summary")
        .collect()
}

#[tokio::test]
async fn summaries_can_be_turned_off() {
    let db = TestDb::new().await;
    let gw = start_gateway_with(
        &[db.url_as("addonreg_gateway")],
        "test-observability-off",
        &[("ADDONREG_REQUEST_LOG_SAMPLE", "0".into())],
    )
    .await;
    for _ in 0..3 {
        reqwest::get(format!("{}/__version__", gw.public))
            .await
            .expect("GET");
    }
    assert_eq!(
        metric(
            &gw,
            "addonreg_gateway_requests_total{route=\"/__version__\",status=\"200\"}"
        )
        .await,
        3.0
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(summaries(&gw.process).is_empty());
}

#[test]
fn a_bad_sample_rate_stops_the_start_naming_the_variable() {
    let mut process = harness::TestProcess::start(
        env!("CARGO_BIN_EXE_api-gateway"),
        &[],
        &[
            (
                "ADDONREG_LISTEN",
                format!("127.0.0.1:{}", harness::free_port()),
            ),
            ("ADDONREG_METRICS_LISTEN", "0".into()),
            ("ADDONREG_REQUEST_LOG_SAMPLE", "1.5".into()),
        ],
    );
    let status = process
        .wait_exit(Duration::from_secs(20))
        .expect("exits by itself");
    assert!(!status.success());
    let lines = process.stdout_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ADDONREG_REQUEST_LOG_SAMPLE")),
        "{lines:?}"
    );
}

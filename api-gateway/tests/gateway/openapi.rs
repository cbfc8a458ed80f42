//! `GET /v1/openapi.json` (CONTRACT "Read gateway"): the document is OpenAPI
//! 3, documents exactly the routes the gateway serves, and its `Record`
//! schema matches a real answer.

use std::collections::BTreeSet;

use harness::TestDb;
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Map, Value, json};

use crate::helpers::{SeedRecord, insert_receipt, insert_records, start_gateway};

const GUID: &str = "{3550f703-e582-4d05-9a08-453d09bdfdc6}";
const GUID_IN_PATH: &str = "%7B3550f703-e582-4d05-9a08-453d09bdfdc6%7D";
const WRITE_ID: &str = "7d0c8f7e-5a43-4f39-9b43-0c1c6a1e2b11";

/// Every (path pattern, method) the gateway's public listener serves: the
/// one list this test holds the document to.
const SERVED: &[(&str, &str)] = &[
    ("/v1/addons/{addon_id}/hashes/{sha256}", "get"),
    ("/v1/addons/{addon_id}/hashes/{sha256}", "head"),
    ("/v1/lookups", "post"),
    ("/v1/addons/{addon_id}/hashes", "get"),
    ("/v1/writes/{write_id}", "get"),
    ("/v1/openapi.json", "get"),
    ("/__lbheartbeat__", "get"),
    ("/__heartbeat__", "get"),
    ("/__version__", "get"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn sha(n: u32) -> String {
    format!("{n:064x}")
}

/// `pattern` with example values for its parameters.
fn example(pattern: &str) -> String {
    pattern
        .replace("{addon_id}", GUID_IN_PATH)
        .replace("{sha256}", &sha(1))
        .replace("{write_id}", WRITE_ID)
}

/// The (path, method) pairs `doc` documents.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("path item is an object");
            METHODS
                .iter()
                .filter(|m| item.contains_key(**m))
                .map(|m| (path.clone(), (*m).to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// An OpenAPI 3.0 schema as JSON Schema: `nullable: true` becomes a `null`
/// alternative, and objects refuse properties the document doesn't name.
fn json_schema(node: &Value) -> Value {
    match node {
        Value::Object(map) => {
            let mut out: Map<String, Value> = map
                .iter()
                .filter(|(key, _)| *key != "nullable")
                .map(|(key, value)| (key.clone(), json_schema(value)))
                .collect();
            if map.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(kind) = out.get("type").cloned() {
                    out.insert("type".into(), json!([kind, "null"]));
                }
                if let Some(Value::Array(allowed)) = out.get_mut("enum") {
                    allowed.push(Value::Null);
                }
            }
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(json_schema).collect()),
        other => other.clone(),
    }
}

/// What `value` violates of `components.schemas.<schema>` in `doc`, by a
/// JSON Schema validator (formats checked, `#/components/schemas/…` refs
/// resolved within the document).
fn violations(doc: &Value, schema: &str, value: &Value) -> Vec<String> {
    let root = json!({
        "$ref": format!("#/components/schemas/{schema}"),
        "components": json_schema(&doc["components"]),
    });
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"));
    validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect()
}

fn check_against(doc: &Value, schema: &str, value: &Value) {
    let errors = violations(doc, schema, value);
    assert!(errors.is_empty(), "{schema}: {value} violates {errors:#?}");
}

#[tokio::test]
async fn the_openapi_document_describes_what_is_served() {
    let db = TestDb::new().await;
    insert_records(&db.owner, &[SeedRecord::registered(GUID, &sha(1))]).await;
    insert_receipt(
        &db.owner,
        WRITE_ID,
        "applied",
        None,
        "2026-11-22T10:00:01.000000Z",
    )
    .await;
    let gw = start_gateway(&[db.url_as("addonreg_gateway")], "test-openapi").await;
    let client = reqwest::Client::new();

    let response = client
        .get(format!("{}/v1/openapi.json", gw.public))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    let doc: Value = response.json().await.expect("JSON");
    let version = doc["openapi"].as_str().expect("openapi field");
    assert!(version.starts_with("3."), "{version}");
    assert!(doc["info"]["title"].is_string());

    let served: BTreeSet<(String, String)> = SERVED
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    assert_eq!(documented(&doc), served);

    // Every documented operation answers on the running gateway, and the
    // methods not documented on its path are refused.
    for (path, method) in &served {
        let url = format!("{}{}", gw.public, example(path));
        let mut request = client.request(method.to_uppercase().parse().unwrap(), &url);
        if method == "post" {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .json(&json!({"items": [{"addon_id": GUID, "sha256": sha(1)}]}));
        }
        let status = request.send().await.expect("request").status().as_u16();
        assert!(
            status != 404 && status != 405,
            "{method} {path} answers {status}"
        );
        // A couple of its responses are documented.
        let responses = &doc["paths"][path][method]["responses"];
        assert!(
            responses.get(status.to_string()).is_some(),
            "{method} {path}: {status} is not documented"
        );
    }
    for path in served.iter().map(|(p, _)| p).collect::<BTreeSet<_>>() {
        for method in [Method::DELETE, Method::PUT, Method::PATCH] {
            let url = format!("{}{}", gw.public, example(path));
            let status = client
                .request(method.clone(), &url)
                .send()
                .await
                .expect("request")
                .status();
            assert_eq!(status, 405, "{method} {path}");
        }
    }

    // A real record validates against the Record schema, and a real error
    // against the Error schema.
    let (status, record) = crate::helpers::get_json(&format!(
        "{}/v1/addons/{GUID_IN_PATH}/hashes/{}",
        gw.public,
        sha(1)
    ))
    .await;
    assert_eq!(status, 200);
    check_against(&doc, "Record", &record);
    let (status, error) = crate::helpers::get_json(&format!(
        "{}/v1/addons/{GUID_IN_PATH}/hashes/nothex",
        gw.public
    ))
    .await;
    assert_eq!(status, 400);
    check_against(&doc, "Error", &error);
    let (status, receipt) =
        crate::helpers::get_json(&format!("{}/v1/writes/{WRITE_ID}", gw.public)).await;
    assert_eq!(status, 200);
    check_against(&doc, "Receipt", &receipt);
    let (status, listing) =
        crate::helpers::get_json(&format!("{}/v1/addons/{GUID_IN_PATH}/hashes", gw.public)).await;
    assert_eq!(status, 200);
    check_against(&doc, "Listing", &listing);
    check_against(&doc, "Record", &listing["items"][0]);
    let lookups: Value = client
        .post(format!("{}/v1/lookups", gw.public))
        .json(&json!({"items": [
            {"addon_id": GUID, "sha256": sha(1)},
            {"addon_id": GUID, "sha256": sha(2)},
        ]}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    check_against(&doc, "LookupsResponse", &lookups);
    for (path, schema) in [("__heartbeat__", "Heartbeat"), ("__version__", "Version")] {
        let (_, body) = crate::helpers::get_json(&format!("{}/{path}", gw.public)).await;
        check_against(&doc, schema, &body);
    }

    // The validator is real: it refuses what the schemas rule out.
    for (schema, bad) in [
        ("Record", json!({"addon_id": GUID, "sha256": "nothex"})),
        ("Record", {
            let mut extra = record.clone();
            extra["surprise"] = json!(1);
            extra
        }),
        ("Record", {
            let mut bad_time = record.clone();
            bad_time["updated_at"] = json!("yesterday");
            bad_time
        }),
        ("Receipt", {
            let mut bad_status = receipt.clone();
            bad_status["status"] = json!("pending");
            bad_status
        }),
        (
            "Listing",
            json!({"items": [{"addon_id": 1}], "next_cursor": null}),
        ),
    ] {
        assert!(
            !violations(&doc, schema, &bad).is_empty(),
            "{schema}: {bad}"
        );
    }
}

//! The read API of CONTRACT "Read gateway", against a real database and the
//! real gateway process: records (GET/HEAD, HTTP caching), lookups, listings,
//! receipts, errors, and failover between replicas.

use harness::TestDb;
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED};
use serde_json::{Value, json};

use crate::helpers::{
    Gateway, SeedRecord, eventually, insert_receipt, insert_records, metric, start_gateway,
    start_gateway_with,
};

const GUID: &str = "{3550f703-e582-4d05-9a08-453d09bdfdc6}";
const GUID_IN_PATH: &str = "%7B3550f703-e582-4d05-9a08-453d09bdfdc6%7D";
const EMAIL_ID: &str = "uBlock0@raymondhill.net";

/// The `n`th digest: 64 lowercase hex digits, ordered as `n`.
fn hash(n: u32) -> String {
    format!("{n:064x}")
}

/// A gateway with its cache off (`ADDONREG_CACHE_MAX_ENTRIES=0`): these
/// tests change rows behind its back (no worker, no invalidation events).
async fn gateway(db: &TestDb) -> Gateway {
    start_gateway_with(
        &[db.url_as("addonreg_gateway")],
        "test-reads",
        &[("ADDONREG_CACHE_MAX_ENTRIES", "0".into())],
    )
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(url: &str) -> (StatusCode, Value) {
    let response = client().get(url).send().await.expect("GET");
    let status = response.status();
    (status, response.json().await.expect("JSON body"))
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
    let response = client()
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .expect("POST");
    let status = response.status();
    (status, response.json().await.expect("JSON body"))
}

/// POSTs `chunks` to `/v1/lookups` with `Transfer-Encoding: chunked` (no
/// `Content-Length`) on a raw connection, and returns the answer's status.
async fn post_chunked(base: &str, chunks: &[&str]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "POST /v1/lookups HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in chunks {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    // The gateway may answer and close before reading everything.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:.200}"))
}

/// Asserts the contract's error shape and that the message starts with `prefix`.
#[track_caller]
fn assert_error(status: StatusCode, body: &Value, code: u16, prefix: &str) {
    assert_eq!(status.as_u16(), code, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(
        body["error"],
        status.canonical_reason().unwrap_or_default(),
        "{body}"
    );
    let message = body["message"].as_str().expect("message");
    assert!(
        message.starts_with(prefix),
        "{message:?} should start with {prefix:?}"
    );
}

#[tokio::test]
async fn records_are_answered_found_missing_or_invalid() {
    let db = TestDb::new().await;
    let revoked = SeedRecord {
        status: "revoked",
        registered_at: None,
        version: None,
        updated_at: "2026-11-22T11:00:00.000001Z".into(),
        ..SeedRecord::registered(EMAIL_ID, &hash(2))
    };
    let tombstone = SeedRecord {
        status: "deleted",
        ..SeedRecord::registered(GUID, &hash(3))
    };
    insert_records(
        &db.owner,
        &[SeedRecord::registered(GUID, &hash(1)), revoked, tombstone],
    )
    .await;
    let gw = gateway(&db).await;
    let base = format!("{}/v1/addons", gw.public);

    let (status, body) = get(&format!("{base}/{GUID_IN_PATH}/hashes/{}", hash(1))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"addon_id": GUID, "sha256": hash(1), "status": "registered", "version": "1.0",
               "registered_at": "2026-11-22T10:00:00.123456Z",
               "updated_at": "2026-11-22T10:00:00.123456Z"})
    );
    let (status, again) = get(&format!(
        "{base}/{GUID_IN_PATH}/hashes/{}?utm_source=x&limit=oops",
        hash(1)
    ))
    .await;
    assert_eq!(
        (status, &again),
        (StatusCode::OK, &body),
        "unknown parameters are ignored"
    );
    // Any spelling of the digest; the answer is lowercase without prefix.
    let upper = hash(1).to_uppercase();
    for spelling in [
        format!("sha256:{upper}"),
        format!("SHA256%3A{upper}"),
        upper.clone(),
    ] {
        let (status, body) = get(&format!("{base}/{GUID_IN_PATH}/hashes/{spelling}")).await;
        assert_eq!(status, 200, "{spelling}: {body}");
        assert_eq!(body["sha256"], hash(1));
    }
    // The id is compared exactly: another case is another add-on.
    let upper_guid = GUID_IN_PATH.to_uppercase();
    let (status, _) = get(&format!("{base}/{upper_guid}/hashes/{}", hash(1))).await;
    assert_eq!(status, 404);

    let (status, body) = get(&format!("{base}/{EMAIL_ID}/hashes/{}", hash(2))).await;
    assert_eq!(status, 200, "revoked records are records: {body}");
    assert_eq!(body["status"], "revoked");
    assert_eq!(body["registered_at"], Value::Null);
    assert_eq!(body["version"], Value::Null);
    assert_eq!(body["updated_at"], "2026-11-22T11:00:00.000001Z");
    let (status, _) = get(&format!(
        "{base}/uBlock0%40raymondhill.net/hashes/{}",
        hash(2)
    ))
    .await;
    assert_eq!(status, 200, "an encoded '@' is decoded");

    for missing in [
        format!("{base}/{GUID_IN_PATH}/hashes/{}", hash(3)),
        format!("{base}/{GUID_IN_PATH}/hashes/{}", hash(4)),
        format!("{base}/never@seen/hashes/{}", hash(1)),
    ] {
        let (status, body) = get(&missing).await;
        assert_error(status, &body, 404, "no record");
    }

    for (url, field) in [
        (format!("{base}/not-an-id/hashes/{}", hash(1)), "addon_id: "),
        (
            format!("{base}/%7Bnot-a-guid%7D/hashes/{}", hash(1)),
            "addon_id: ",
        ),
        (format!("{base}/%FF%FE@x/hashes/{}", hash(1)), "addon_id: "),
        (
            format!("{base}/{}/hashes/{}", "a".repeat(300) + "@x", hash(1)),
            "addon_id: ",
        ),
        (format!("{base}/{GUID_IN_PATH}/hashes/abc"), "sha256: "),
        (
            format!("{base}/{GUID_IN_PATH}/hashes/{}0", hash(1)),
            "sha256: ",
        ),
        (
            format!("{base}/{GUID_IN_PATH}/hashes/md5:{}", hash(1)),
            "sha256: ",
        ),
    ] {
        let (status, body) = get(&url).await;
        assert_error(status, &body, 400, field);
    }
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let db = TestDb::new().await;
    insert_records(&db.owner, &[SeedRecord::registered(GUID, &hash(1))]).await;
    let gw = gateway(&db).await;
    for url in [
        format!("{}/v1/addons/{GUID_IN_PATH}/hashes/{}", gw.public, hash(1)),
        format!("{}/v1/addons/{GUID_IN_PATH}/hashes/{}", gw.public, hash(2)),
        format!("{}/v1/addons/bad/hashes/{}", gw.public, hash(2)),
    ] {
        let got = client().get(&url).send().await.unwrap();
        let head = client().head(&url).send().await.unwrap();
        assert_eq!(head.status(), got.status(), "{url}");
        for name in [
            CONTENT_TYPE,
            CONTENT_LENGTH,
            ETAG,
            LAST_MODIFIED,
            CACHE_CONTROL,
        ] {
            assert_eq!(
                head.headers().get(&name),
                got.headers().get(&name),
                "{name} of {url}"
            );
        }
        let length: usize = got.headers()[CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(got.bytes().await.unwrap().len(), length);
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");
    }
}

#[tokio::test]
async fn http_caching_of_records() {
    let db = TestDb::new().await;
    let record = SeedRecord {
        updated_at: "2026-11-22T10:00:00.100000Z".into(),
        ..SeedRecord::registered(GUID, &hash(1))
    };
    insert_records(&db.owner, std::slice::from_ref(&record)).await;
    let gw = gateway(&db).await;
    let url = format!("{}/v1/addons/{GUID_IN_PATH}/hashes/{}", gw.public, hash(1));

    let first = client().get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let h = first.headers();
    assert_eq!(h[CACHE_CONTROL], "public, max-age=60, s-maxage=1");
    assert_eq!(h[LAST_MODIFIED], "Sun, 22 Nov 2026 10:00:00 GMT");
    let etag = h[ETAG].to_str().unwrap().to_string();
    assert!(
        etag.len() == 34 && etag.starts_with('"') && etag.ends_with('"'),
        "a strong, quoted ETag: {etag}"
    );

    // Only the microseconds of updated_at change: a new ETag, the same Last-Modified.
    let touched = SeedRecord {
        updated_at: "2026-11-22T10:00:00.100001Z".into(),
        ..record.clone()
    };
    insert_records(&db.owner, &[touched]).await;
    let second = client().get(&url).send().await.unwrap();
    assert_eq!(
        second.headers()[LAST_MODIFIED],
        "Sun, 22 Nov 2026 10:00:00 GMT"
    );
    let etag2 = second.headers()[ETAG].to_str().unwrap().to_string();
    assert_ne!(
        etag2, etag,
        "the ETag follows every change, microseconds included"
    );
    assert_eq!(
        client().get(&url).send().await.unwrap().headers()[ETAG],
        etag2.as_str(),
        "and is stable while nothing changes"
    );

    let conditional = |headers: &'static [(&'static str, &'static str)], extra: Option<String>| {
        let mut request = client().get(&url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(inm) = extra {
            request = request.header("if-none-match", inm);
        }
        request.send()
    };

    // If-None-Match: the current tag (alone, in a list, weak) or `*` → 304.
    for inm in [
        etag2.clone(),
        format!("\"nope\", {etag2}"),
        format!("W/{etag2}"),
        "*".to_string(),
    ] {
        let response = conditional(&[], Some(inm.clone())).await.unwrap();
        assert_eq!(response.status(), 304, "If-None-Match: {inm}");
        let h = response.headers().clone();
        assert_eq!(h[ETAG], etag2.as_str());
        assert_eq!(h[LAST_MODIFIED], "Sun, 22 Nov 2026 10:00:00 GMT");
        assert_eq!(h[CACHE_CONTROL], "public, max-age=60, s-maxage=1");
        assert!(
            response.bytes().await.unwrap().is_empty(),
            "a 304 has no body"
        );
    }
    let stale = conditional(&[], Some(etag.clone())).await.unwrap();
    assert_eq!(stale.status(), 200, "the old tag no longer matches");

    // If-Modified-Since, to the second.
    for (since, expected) in [
        ("Sun, 22 Nov 2026 10:00:00 GMT", 304),
        ("Sun, 22 Nov 2026 10:00:01 GMT", 304),
        ("Sun, 22 Nov 2026 09:59:59 GMT", 200),
        ("not a date", 200),
    ] {
        let response = client()
            .get(&url)
            .header("if-modified-since", since)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "If-Modified-Since: {since}");
        assert_eq!(response.headers()[ETAG], etag2.as_str());
    }
    // …ignored when If-None-Match is present and does not match.
    let response = conditional(
        &[("if-modified-since", "Sun, 22 Nov 2026 10:00:01 GMT")],
        Some("\"nope\"".into()),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);

    // HEAD honours preconditions too.
    let head = client()
        .head(&url)
        .header("if-none-match", &etag2)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 304);

    // A 404 carries the missing TTL (and no validators).
    let missing = client()
        .get(format!(
            "{}/v1/addons/{GUID_IN_PATH}/hashes/{}",
            gw.public,
            hash(9)
        ))
        .header("if-none-match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404, "`*` matches no missing record");
    assert_eq!(
        missing.headers()[CACHE_CONTROL],
        "public, max-age=5, s-maxage=1"
    );
    assert!(missing.headers().get(ETAG).is_none());
}

#[tokio::test]
async fn cache_control_follows_the_settings() {
    let db = TestDb::new().await;
    insert_records(&db.owner, &[SeedRecord::registered(EMAIL_ID, &hash(1))]).await;
    let gw = start_gateway_with(
        &[db.url_as("addonreg_gateway")],
        "test-reads",
        &[
            ("ADDONREG_CACHE_TTL_FOUND_SECS", "3600".into()),
            ("ADDONREG_CACHE_TTL_MISSING_SECS", "0".into()),
        ],
    )
    .await;
    let url = |n| format!("{}/v1/addons/{EMAIL_ID}/hashes/{}", gw.public, hash(n));
    let found = client().get(url(1)).send().await.unwrap();
    // Not subscribed (no broker topology under this prefix): shared caches
    // get the disconnected lifetime, capped by the gateway's own.
    assert_eq!(
        found.headers()[CACHE_CONTROL],
        "public, max-age=3600, s-maxage=1"
    );
    let missing = client().get(url(2)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()[CACHE_CONTROL],
        "public, max-age=0, s-maxage=0"
    );
}

#[tokio::test]
async fn lookups_answer_every_item_in_order() {
    let db = TestDb::new().await;
    let revoked = SeedRecord {
        status: "revoked",
        ..SeedRecord::registered(EMAIL_ID, &hash(2))
    };
    let tombstone = SeedRecord {
        status: "deleted",
        ..SeedRecord::registered(EMAIL_ID, &hash(3))
    };
    insert_records(
        &db.owner,
        &[SeedRecord::registered(GUID, &hash(1)), revoked, tombstone],
    )
    .await;
    let gw = gateway(&db).await;
    let upper_guid = GUID.to_uppercase();
    let items = json!({"items": [
        {"addon_id": EMAIL_ID, "sha256": hash(3)},
        {"addon_id": GUID, "sha256": format!("SHA256:{}", hash(1).to_uppercase())},
        {"addon_id": upper_guid, "sha256": hash(1)},
        {"addon_id": EMAIL_ID, "sha256": format!("sha256:{}", hash(2)), "ignored": true},
        {"addon_id": GUID, "sha256": hash(1)},
        {"addon_id": "never@seen", "sha256": hash(7).to_uppercase()},
    ]});
    let (status, body) = post(&format!("{}/v1/lookups", gw.public), items.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let record_1 = json!({"addon_id": GUID, "sha256": hash(1), "status": "registered",
        "version": "1.0", "registered_at": "2026-11-22T10:00:00.123456Z",
        "updated_at": "2026-11-22T10:00:00.123456Z"});
    assert_eq!(
        body,
        json!({"results": [
            {"addon_id": EMAIL_ID, "sha256": hash(3), "status": "unknown"},
            record_1,
            {"addon_id": upper_guid, "sha256": hash(1), "status": "unknown"},
            {"addon_id": EMAIL_ID, "sha256": hash(2), "status": "revoked", "version": "1.0",
             "registered_at": "2026-11-22T10:00:00.123456Z",
             "updated_at": "2026-11-22T10:00:00.123456Z"},
            record_1,
            {"addon_id": "never@seen", "sha256": hash(7), "status": "unknown"},
        ]})
    );

    // 1000 items is the limit, inclusive.
    let thousand: Vec<Value> = (0..1000)
        .map(|n| json!({"addon_id": GUID, "sha256": hash(n)}))
        .collect();
    let (status, body) = post(
        &format!("{}/v1/lookups", gw.public),
        json!({ "items": thousand }).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    assert_eq!(results[1]["status"], "registered");
    assert_eq!(results[999]["status"], "unknown");
}

#[tokio::test]
async fn lookups_refuse_bad_and_oversized_bodies() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let url = format!("{}/v1/lookups", gw.public);
    let item = |n: u32| json!({"addon_id": GUID, "sha256": hash(n)});

    let mut items: Vec<Value> = (0..5).map(item).collect();
    items[3]["sha256"] = json!("abc");
    items[4]["addon_id"] = json!("bad");
    let (status, body) = post(&url, json!({ "items": items }).to_string()).await;
    assert_error(status, &body, 400, "items[3].sha256: must be 64 hex digits");
    items[1]["addon_id"] = json!(42);
    let (status, body) = post(&url, json!({ "items": items }).to_string()).await;
    assert_error(status, &body, 400, "items[1].addon_id: ");

    for count in [0, 1001] {
        let items: Vec<Value> = (0..count).map(item).collect();
        let (status, body) = post(&url, json!({ "items": items }).to_string()).await;
        assert_error(status, &body, 400, "items: ");
    }
    for garbage in [
        "",
        "null",
        "[]",
        "{}",
        "{\"items\": \"x\"}",
        "{\"items\": [null]}",
        "{\"items\": [{\"addon_id\": null, \"sha256\": null}]}",
        "{\"items\": [",
        "\u{0}\u{1}",
        &"[".repeat(100_000),
    ] {
        let (status, body) = post(&url, garbage.to_string()).await;
        assert_eq!(status, 400, "{garbage:.40}: {body}");
        assert_eq!(body["code"], 400);
    }
    let (status, body) = post(&url, vec![0xff, 0xfe, 0x00]).await;
    assert_error(status, &body, 400, "body: ");

    // 256 KiB is the limit, inclusive: padding in an ignored member.
    let sized = |size: usize| {
        let head = format!("{{\"items\": [{}], \"pad\": \"", item(1));
        let pad = "x".repeat(size - head.len() - 2);
        format!("{head}{pad}\"}}")
    };
    let (status, body) = post(&url, sized(256 * 1024)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&url, sized(256 * 1024 + 1)).await;
    assert_error(status, &body, 413, "request body too large");
    let (status, body) = post(&url, sized(1024 * 1024)).await;
    assert_error(status, &body, 413, "request body too large");
    // Chunked, without Content-Length: accepted, and refused while reading
    // once over the limit.
    let small = json!({"items": [item(1)]}).to_string();
    let (head, tail) = small.split_at(10);
    assert_eq!(post_chunked(&gw.public, &[head, tail]).await, 200);
    let big = sized(300 * 1024);
    let (head, tail) = big.split_at(200 * 1024);
    assert_eq!(post_chunked(&gw.public, &[head, tail]).await, 413);

    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn listings_page_through_an_addon_by_digest() {
    let db = TestDb::new().await;
    // 250 records at even n, a revoked one among them and a tombstone;
    // another add-on's records interleave but never show.
    let mut seeds: Vec<SeedRecord> = (0..250)
        .map(|i| SeedRecord::registered(GUID, &hash(2 * i)))
        .collect();
    seeds[10].status = "revoked";
    seeds.push(SeedRecord {
        status: "deleted",
        ..SeedRecord::registered(GUID, &hash(21))
    });
    seeds.extend((0..50).map(|i| SeedRecord::registered(EMAIL_ID, &hash(2 * i + 1))));
    insert_records(&db.owner, &seeds).await;
    let gw = gateway(&db).await;
    let list = format!("{}/v1/addons/{GUID_IN_PATH}/hashes", gw.public);

    let (status, first) = get(&format!("{list}?limit=100&utm_source=ignored")).await;
    assert_eq!(status, 200, "{first}");
    let items = first["items"].as_array().unwrap();
    assert_eq!(items.len(), 100);
    assert_eq!(items[0]["sha256"], hash(0));
    assert_eq!(items[10]["status"], "revoked", "revoked records are listed");
    assert_eq!(items[99]["sha256"], hash(198));
    assert!(items.iter().all(|r| r["addon_id"] == GUID));
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();

    // Between pages: one record lands after the cursor (it shows), one before
    // it (it can't), and one listed later becomes a tombstone (it goes).
    insert_records(
        &db.owner,
        &[
            SeedRecord::registered(GUID, &hash(199)),
            SeedRecord::registered(GUID, &hash(1)),
            SeedRecord {
                status: "deleted",
                ..SeedRecord::registered(GUID, &hash(400))
            },
        ],
    )
    .await;
    let mut seen: Vec<String> = items
        .iter()
        .map(|r| r["sha256"].as_str().unwrap().to_string())
        .collect();
    let mut cursor = Some(cursor);
    let mut pages = 1;
    while let Some(c) = cursor {
        let (status, page) = get(&format!("{list}?cursor={c}&limit=100")).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["sha256"].as_str().unwrap().to_string()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_string);
    }
    assert_eq!(pages, 3);
    let mut expected: Vec<String> = (0..250)
        .map(|i| hash(2 * i))
        .filter(|h| *h != hash(400))
        .collect();
    expected.push(hash(199));
    expected.sort();
    assert_eq!(seen, expected, "in digest order, each once, none skipped");

    // The default page is 100; an exact last page has no next cursor.
    let (_, page) = get(&list).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 100);
    let (_, page) = get(&format!(
        "{}/v1/addons/{EMAIL_ID}/hashes?limit=50",
        gw.public
    ))
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 50);
    assert_eq!(page["next_cursor"], Value::Null);
    let (_, page) = get(&format!("{list}?limit=1000")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 251);
    assert_eq!(page["next_cursor"], Value::Null);

    let (status, body) = get(&format!("{}/v1/addons/never@seen/hashes", gw.public)).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"items": [], "next_cursor": null}));

    for (query, field) in [
        ("limit=0", "limit: "),
        ("limit=1001", "limit: "),
        ("limit=-5", "limit: "),
        ("limit=ten", "limit: "),
        ("limit=", "limit: "),
        ("cursor=nope", "cursor: "),
        ("cursor=", "cursor: "),
    ] {
        let (status, body) = get(&format!("{list}?{query}")).await;
        assert_error(status, &body, 400, field);
    }
    let (status, body) = get(&format!("{}/v1/addons/nope/hashes", gw.public)).await;
    assert_error(status, &body, 400, "addon_id: ");
}

#[tokio::test]
async fn receipts_are_answered_by_write_id() {
    let db = TestDb::new().await;
    insert_receipt(
        &db.owner,
        "7d0c8f7e-5a43-4f39-9b43-0c1c6a1e2b11",
        "applied",
        None,
        "2026-11-22T10:00:00.5Z",
    )
    .await;
    insert_receipt(
        &db.owner,
        "amo:42.x_Y",
        "rejected",
        Some("invalid_field: invalid ops[0].sha256: must be 64 hex digits"),
        "2026-11-22T10:00:01.000001Z",
    )
    .await;
    let gw = gateway(&db).await;
    let writes = format!("{}/v1/writes", gw.public);

    let (status, body) = get(&format!("{writes}/7d0c8f7e-5a43-4f39-9b43-0c1c6a1e2b11")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"write_id": "7d0c8f7e-5a43-4f39-9b43-0c1c6a1e2b11", "status": "applied",
               "reason": null, "processed_at": "2026-11-22T10:00:00.500000Z"})
    );
    for spelling in ["amo:42.x_Y", "amo%3A42.x_Y"] {
        let (status, body) = get(&format!("{writes}/{spelling}")).await;
        assert_eq!(status, 200, "{spelling}");
        assert_eq!(body["status"], "rejected");
        assert_eq!(
            body["reason"],
            "invalid_field: invalid ops[0].sha256: must be 64 hex digits"
        );
    }
    let (status, body) = get(&format!("{writes}/not-processed-yet")).await;
    assert_error(status, &body, 404, "no receipt");
    let (status, body) = get(&format!("{writes}/AMO:42.x_Y")).await;
    assert_error(status, &body, 404, "no receipt");
    for bad in ["a%20b", "a%2Fb", "%FF", &"a".repeat(65)] {
        let (status, body) = get(&format!("{writes}/{bad}")).await;
        assert_error(status, &body, 400, "write_id: ");
    }
}

#[tokio::test]
async fn garbage_is_a_client_error_never_a_server_error() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let record = format!("/v1/addons/{GUID_IN_PATH}/hashes/{}", hash(1));
    let mut paths = vec![
        "/".to_string(),
        "/v1".into(),
        "/v1/".into(),
        "/v1/addons".into(),
        "/v1/addons/".into(),
        "/v1/addons//hashes/x".into(),
        "/v1/addons/%/hashes/%".into(),
        "/v1/addons/%%7B/hashes".into(),
        "/v1/addons/a@b/hashes/x/y".into(),
        "/v1/addons/a@b/other".into(),
        "/v1/writes".into(),
        "/v1/writes/".into(),
        "/v1/writes/a/b".into(),
        "/v2/lookups".into(),
        "/v1/addons/a@b/hashes?limit=%FF&cursor=%00".into(),
        "/v1/addons/a@b/hashes?limit=1&limit=2000".into(),
        format!("/v1/addons/{}/hashes", "%41".repeat(2000)),
        format!("{record}?x=%ZZ"),
    ];
    paths.push(record.clone());
    let methods = [
        reqwest::Method::GET,
        reqwest::Method::HEAD,
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
        reqwest::Method::OPTIONS,
    ];
    for path in &paths {
        for method in &methods {
            let response = client()
                .request(method.clone(), format!("{}{path}", gw.public))
                .body("{\"items\": 1}")
                .send()
                .await
                .unwrap();
            let status = response.status();
            let is_the_record =
                path == &record && matches!(*method, reqwest::Method::GET | reqwest::Method::HEAD);
            if is_the_record {
                assert_eq!(status, 404, "{method} {path}");
            } else {
                assert!(status.is_client_error(), "{method} {path}: {status}");
            }
            if *method != reqwest::Method::HEAD {
                let body: Value = response.json().await.expect("a JSON error body");
                assert_eq!(body["code"], status.as_u16(), "{method} {path}");
            }
        }
    }
    let (status, body) = get(&format!("{}/v1/addons/a@b/hashes?&&==&=x&y", gw.public)).await;
    assert_eq!(
        status, 200,
        "empty and unknown parameters are ignored: {body}"
    );
    let response = client()
        .delete(format!("{}{record}", gw.public))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405, "the route exists, not the method");
    let (status, _) = post(&format!("{}/v1/addons/a@b/hashes", gw.public), "{}").await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn with_the_cache_off_every_read_queries_and_answers_the_same() {
    let db = TestDb::new().await;
    insert_records(&db.owner, &[SeedRecord::registered(GUID, &hash(1))]).await;
    let gw = gateway(&db).await;
    let url = format!("{}/v1/addons/{GUID_IN_PATH}/hashes/{}", gw.public, hash(1));
    let first = client().get(&url).send().await.unwrap();
    let etag = first.headers()[ETAG].clone();
    let body: Value = first.json().await.unwrap();
    for _ in 0..3 {
        let again = client().get(&url).send().await.unwrap();
        assert_eq!(again.headers()[ETAG], etag);
        assert_eq!(again.json::<Value>().await.unwrap(), body);
    }
    let revalidated = client()
        .get(&url)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);
    let queries = "addonreg_gateway_store_queries_total{kind=\"record\"}";
    assert_eq!(metric(&gw, queries).await, 5.0, "one query per read");
    assert_eq!(metric(&gw, "addonreg_gateway_cache_hits_total").await, 0.0);
    assert_eq!(metric(&gw, "addonreg_gateway_cache_entries").await, 0.0);
}

/// Sends raw bytes as one request and returns the status code hyper answers.
async fn raw_status(base: &str, request: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let line = String::from_utf8_lossy(&answer[..n]).to_string();
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {line:?}"))
}

#[tokio::test]
async fn garbage_headers_are_ignored_or_refused_never_a_server_error() {
    let db = TestDb::new().await;
    insert_records(&db.owner, &[SeedRecord::registered(GUID, &hash(1))]).await;
    let gw = gateway(&db).await;
    let record = format!("/v1/addons/{GUID_IN_PATH}/hashes/{}", hash(1));
    // Unreadable preconditions are ignored (RFC 9110): a full 200.
    for (name, value) in [
        ("if-none-match", "garbage"),
        ("if-none-match", "\"unterminated"),
        ("if-none-match", "W/"),
        ("if-none-match", ",,,"),
        ("if-modified-since", "yesterday"),
        ("if-modified-since", "Sun, 99 Nov 2026 10:00:00 GMT"),
        ("accept", "text/html"),
        ("accept-encoding", "br;q=garbage"),
        ("content-type", "x/y; charset=\"\\\""),
    ] {
        let response = client()
            .get(format!("{}{record}", gw.public))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}: {value:?}");
    }
    let host = gw.public.trim_start_matches("http://");
    let get_raw = |headers: &str| format!("GET {record} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n");
    // Header values that are not UTF-8 (obs-text) are still ignored.
    let mut latin1 = get_raw("").into_bytes();
    latin1.truncate(latin1.len() - 2);
    latin1.extend_from_slice(b"If-None-Match: \"\xff\xfe\"\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_status(&gw.public, &latin1).await, 200);
    // Malformed framing and oversized heads are refused with a 4xx.
    let post = |headers: &str, body: &str| {
        format!("POST /v1/lookups HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n{body}")
    };
    let huge = format!("X-Big: {}\r\n", "a".repeat(512 * 1024));
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    for (what, request) in [
        (
            "a bad Content-Length",
            post("Content-Length: nope\r\n", "{}"),
        ),
        (
            "two Content-Lengths",
            post("Content-Length: 2\r\nContent-Length: 3\r\n", "{}"),
        ),
        (
            "a bad chunk size",
            post("Transfer-Encoding: chunked\r\n", "zz\r\n{}\r\n0\r\n\r\n"),
        ),
        ("a header line without a colon", get_raw("NoColonHere\r\n")),
        ("a half-megabyte header", get_raw(&huge)),
        ("200 headers", get_raw(&many)),
        (
            "a space in the request target",
            "GET /v1/a b HTTP/1.1\r\n\r\n".into(),
        ),
    ] {
        let status = raw_status(&gw.public, request.as_bytes()).await;
        assert!((400..500).contains(&status), "{what}: {status}");
    }
    // The gateway still answers.
    let (status, _) = get(&format!("{}{record}", gw.public)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn reads_fail_over_from_a_dead_replica() {
    let db = TestDb::new().await;
    insert_records(&db.owner, &[SeedRecord::registered(GUID, &hash(1))]).await;
    insert_receipt(&db.owner, "w1", "applied", None, "2026-11-22T10:00:00Z").await;
    let dead = format!(
        "postgres://addonreg_gateway@127.0.0.1:{}/{}",
        harness::free_port(),
        db.name()
    );
    let gw = start_gateway(&[dead.clone(), db.url_as("addonreg_gateway")], "test-reads").await;
    // The background checks tell which replica is down, before any read.
    let healthy = |n: u32| format!("addonreg_gateway_replica_healthy{{replica=\"replica-{n}\"}}");
    eventually(std::time::Duration::from_secs(5), "checks ran", || async {
        metric(&gw, &healthy(2)).await == 1.0
    })
    .await;
    assert_eq!(metric(&gw, &healthy(1)).await, 0.0);
    // Round-robin starts reads at the dead replica too: they go on to the live one.
    for _ in 0..3 {
        let (status, body) = get(&format!(
            "{}/v1/addons/{GUID_IN_PATH}/hashes/{}",
            gw.public,
            hash(1)
        ))
        .await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::OK, &json!("registered")),
            "{body}"
        );
        let (status, body) = post(
            &format!("{}/v1/lookups", gw.public),
            json!({"items": [{"addon_id": GUID, "sha256": hash(1)}]}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["results"][0]["status"], "registered");
        let (status, body) = get(&format!("{}/v1/addons/{GUID_IN_PATH}/hashes", gw.public)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["items"].as_array().unwrap().len(), 1);
        let (status, _) = get(&format!("{}/v1/writes/w1", gw.public)).await;
        assert_eq!(status, 200);
    }

    // The dead replica is tried last for a while, so reads don't wait for
    // it (a connection attempt costs the acquire timeout, 500 ms here).
    for _ in 0..4 {
        let started = std::time::Instant::now();
        let (status, _) = get(&format!("{}/v1/writes/w1", gw.public)).await;
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < std::time::Duration::from_millis(400),
            "a read waited {:?} for the dead replica",
            started.elapsed()
        );
    }

    // With no replica answering: 503, and nothing about the hosts.
    let all_dead = start_gateway(&[dead], "test-reads").await;
    let (status, body) = get(&format!(
        "{}/v1/addons/{GUID_IN_PATH}/hashes/{}",
        all_dead.public,
        hash(1)
    ))
    .await;
    assert_error(status, &body, 503, "no database replica answered");
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
    let missing_ttl = client()
        .get(format!("{}/v1/writes/w1", all_dead.public))
        .send()
        .await
        .unwrap();
    assert_eq!(missing_ttl.status(), 503);
    assert!(
        missing_ttl.headers().get(CACHE_CONTROL).is_none(),
        "an outage is not cached"
    );
}

//! The read API (CONTRACT "Read gateway"): records, lookups, listings and
//! receipts.
//!
//! Each route matches its path, then its method, then parses its inputs into
//! domain types or rejects with a typed [`ApiError`] naming the input; so a
//! wrong path is a 404, a wrong method a 405 and a bad value a 400. Handlers
//! are a few lines around one [`Reads`] call and never see an unchecked string.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::str::FromStr;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::Value;
use warp::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::{Buf, Filter, Rejection};

use bytes::Bytes;
use shared::domain::{AddonId, Sha256, WriteId};
use shared::record::Record;

use crate::answer::RecordAnswer;
use crate::cache::{Answer, CachedReads};
use crate::errors::ApiError;
use crate::http_caching::{CachePolicy, Preconditions};
use crate::store::Reads;

/// Most items in one lookup (inclusive).
pub const LOOKUP_MAX_ITEMS: usize = 1000;
/// Largest lookup body, in bytes (inclusive); 1000 items with GUID ids take
/// about 140 KB.
pub const LOOKUP_MAX_BODY: u64 = 256 * 1024;
/// Most records on one listing page (inclusive).
pub const LIST_MAX_LIMIT: u16 = 1000;
/// Records on a listing page when `limit` is absent.
pub const LIST_DEFAULT_LIMIT: u16 = 100;

/// Every read route.
pub fn routes<R: Reads>(
    reads: CachedReads<R>,
    caching: CachePolicy,
    body_read_timeout: Duration,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    record(reads.clone(), caching.clone())
        .or(lookups(reads.clone(), body_read_timeout))
        .unify()
        .or(listing(reads.clone(), caching.clone()))
        .unify()
        .or(receipt(reads))
        .unify()
        .or(openapi())
        .unify()
}

/// The OpenAPI document of the public API (CONTRACT "Read gateway"), kept
/// true by `tests/gateway/openapi.rs`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /v1/openapi.json`.
fn openapi() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "openapi.json")
        .and(only(&[Method::GET]))
        .map(|| json_bytes(StatusCode::OK, OPENAPI.as_bytes().to_vec()))
}

/// `GET` and `HEAD /v1/addons/{addon_id}/hashes/{sha256}`.
fn record<R: Reads>(
    reads: CachedReads<R>,
    caching: CachePolicy,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "addons" / Segment / "hashes" / Segment)
        .and(get_or_head())
        .and_then(|addon_id: Segment, sha256: Segment, method| async move {
            Ok::<_, Rejection>((parse_addon_id(&addon_id)?, parse_sha256(&sha256)?, method))
        })
        .untuple_one()
        .and(preconditions())
        .then(move |addon_id, sha256, method, pre| {
            get_record(
                reads.clone(),
                caching.clone(),
                addon_id,
                sha256,
                method,
                pre,
            )
        })
}

async fn get_record<R: Reads>(
    reads: CachedReads<R>,
    caching: CachePolicy,
    addon_id: AddonId,
    sha256: Sha256,
    method: Method,
    pre: Preconditions,
) -> Response {
    let response = match reads.answer(&addon_id, &sha256).await {
        Ok(Some(answer)) => {
            let mut response = found(&answer, &pre);
            caching.mark_found(response.headers_mut(), &addon_id, &sha256);
            response
        }
        Ok(None) => {
            let mut response = ApiError::NotFound(NO_RECORD).response();
            caching.mark_missing(response.headers_mut(), &addon_id, &sha256);
            response
        }
        Err(e) => ApiError::from(e).response(),
    };
    if method == Method::HEAD {
        without_body(response)
    } else {
        response
    }
}

const NO_RECORD: &str = "no record of this add-on file";

/// A found record's 200, or 304 when the client's copy is current; both
/// with validators. The body and validators were encoded when the answer
/// was cached: a hit only copies references.
fn found(answer: &RecordAnswer, pre: &Preconditions) -> Response {
    let mut response = if pre.not_modified(&answer.validators) {
        let mut response = Response::new(Vec::new().into());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        json_bytes(StatusCode::OK, answer.body.clone())
    };
    answer.validators.write(response.headers_mut());
    response
}

/// `POST /v1/lookups`.
fn lookups<R: Reads>(
    reads: CachedReads<R>,
    body_read_timeout: Duration,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "lookups")
        .and(only(&[Method::POST]))
        .and(lookup_items(body_read_timeout))
        .then(move |items| post_lookups(reads.clone(), items))
}

async fn post_lookups<R: Reads>(reads: CachedReads<R>, items: Vec<(AddonId, Sha256)>) -> Response {
    match reads.lookup(&items).await {
        Ok(answers) => json_bytes(StatusCode::OK, lookup_results(&items, &answers)),
        Err(e) => ApiError::from(e).response(),
    }
}

/// An item no record answers.
#[derive(Serialize)]
struct Unknown<'a> {
    addon_id: &'a AddonId,
    sha256: &'a Sha256,
    status: &'static str,
}

/// `{"results": [...]}`, one per item in order: a found record's encoded
/// body as it is, else an `unknown` object.
fn lookup_results(items: &[(AddonId, Sha256)], answers: &[Answer]) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + answers.len() * 256);
    body.extend_from_slice(b"{\"results\":[");
    for (i, ((addon_id, sha256), answer)) in items.iter().zip(answers).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        match answer {
            Some(answer) => body.extend_from_slice(&answer.body),
            None => {
                let unknown = Unknown {
                    addon_id,
                    sha256,
                    status: "unknown",
                };
                // Writing a derived Serialize of strings into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut body, &unknown);
            }
        }
    }
    body.extend_from_slice(b"]}");
    body
}

/// `GET /v1/addons/{addon_id}/hashes?limit=N&cursor=C`.
fn listing<R: Reads>(
    reads: CachedReads<R>,
    caching: CachePolicy,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "addons" / Segment / "hashes")
        .and(only(&[Method::GET]))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(
            |addon_id: Segment, query: HashMap<String, String>| async move {
                Ok::<_, Rejection>((parse_addon_id(&addon_id)?, PageRequest::parse(&query)?))
            },
        )
        .untuple_one()
        .then(move |addon_id, page| get_listing(reads.clone(), caching.clone(), addon_id, page))
}

async fn get_listing<R: Reads>(
    reads: CachedReads<R>,
    caching: CachePolicy,
    addon_id: AddonId,
    page: PageRequest,
) -> Response {
    match reads.list(&addon_id, page.after, page.limit).await {
        Ok(records) => {
            let mut response = json(StatusCode::OK, &Page::of(records, page.limit));
            caching.mark_listing(response.headers_mut(), &addon_id);
            response
        }
        Err(e) => ApiError::from(e).response(),
    }
}

/// Which page of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageRequest {
    /// The digest the previous page ended at.
    after: Option<Sha256>,
    limit: u16,
}

impl PageRequest {
    /// From the query string; other parameters are ignored.
    fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let limit = match query.get("limit") {
            None => LIST_DEFAULT_LIMIT,
            Some(limit) => limit
                .parse::<u16>()
                .ok()
                .filter(|n| (1..=LIST_MAX_LIMIT).contains(n))
                .ok_or(ApiError::invalid(
                    "limit",
                    "must be an integer from 1 to 1000",
                ))?,
        };
        // The cursor is the last digest of the previous page: opaque to
        // clients, and a keyset position that inserts can't shift.
        let after = query
            .get("cursor")
            .map(|cursor| Sha256::parse(cursor))
            .transpose()
            .map_err(|_| ApiError::invalid("cursor", "must be a next_cursor of a previous page"))?;
        Ok(Self { after, limit })
    }
}

/// One listing page.
#[derive(Serialize)]
struct Page {
    items: Vec<Record>,
    next_cursor: Option<String>,
}

impl Page {
    /// From up to `limit + 1` records: the extra one only says there is more.
    fn of(mut records: Vec<Record>, limit: u16) -> Self {
        let more = records.len() > usize::from(limit);
        records.truncate(usize::from(limit));
        let next_cursor = more
            .then(|| records.last().map(|r| r.sha256.to_string()))
            .flatten();
        Self {
            items: records,
            next_cursor,
        }
    }
}

/// `GET /v1/writes/{write_id}`.
fn receipt<R: Reads>(
    reads: CachedReads<R>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "writes" / Segment)
        .and(only(&[Method::GET]))
        .and_then(|write_id: Segment| async move { Ok::<_, Rejection>(parse_write_id(&write_id)?) })
        .then(move |write_id| get_receipt(reads.clone(), write_id))
}

async fn get_receipt<R: Reads>(reads: CachedReads<R>, write_id: WriteId) -> Response {
    match reads.receipt(&write_id).await {
        Ok(Some(receipt)) => json(StatusCode::OK, &receipt),
        Ok(None) => ApiError::NotFound(NO_RECEIPT).response(),
        Err(e) => ApiError::from(e).response(),
    }
}

const NO_RECEIPT: &str = "no receipt for this write: not processed yet, or purged";

/// A path segment as sent, still percent-encoded; parsed once the route has
/// matched, so that a wrong path stays a 404 and a wrong method a 405.
#[derive(Debug)]
struct Segment(String);

impl FromStr for Segment {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl Segment {
    /// The segment percent-decoded (`%7B…%7D` is `{…}`), as UTF-8.
    fn decode(&self, field: &'static str) -> Result<Cow<'_, str>, ApiError> {
        percent_decode_str(&self.0)
            .decode_utf8()
            .map_err(|_| ApiError::invalid(field, "must be percent-encoded UTF-8"))
    }
}

fn parse_addon_id(segment: &Segment) -> Result<AddonId, ApiError> {
    AddonId::parse(&segment.decode("addon_id")?)
        .map_err(|e| ApiError::invalid("addon_id", e.to_string()))
}

fn parse_sha256(segment: &Segment) -> Result<Sha256, ApiError> {
    Sha256::parse(&segment.decode("sha256")?)
        .map_err(|e| ApiError::invalid("sha256", e.to_string()))
}

fn parse_write_id(segment: &Segment) -> Result<WriteId, ApiError> {
    WriteId::parse(&segment.decode("write_id")?)
        .map_err(|e| ApiError::invalid("write_id", e.to_string()))
}

/// GET or HEAD, and which.
fn get_or_head() -> impl Filter<Extract = (Method,), Error = Rejection> + Clone {
    methods(&[Method::GET, Method::HEAD])
}

/// Passes the `allowed` methods and answers which one came. Any other is a
/// 405 whose `Allow` header names them (RFC 9110 §15.5.6; warp's own 405
/// has none). Used after the path, so that a wrong path stays a 404.
pub fn methods(
    allowed: &'static [Method],
) -> impl Filter<Extract = (Method,), Error = Rejection> + Clone {
    warp::method().and_then(move |method: Method| {
        futures_util::future::ready(if allowed.contains(&method) {
            Ok(method)
        } else {
            Err(warp::reject::custom(ApiError::MethodNotAllowed(allowed)))
        })
    })
}

/// [`methods`] for a route that does not care which of them came.
pub fn only(allowed: &'static [Method]) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    methods(allowed).map(|_| ()).untuple_one()
}

/// The request's `If-None-Match` and `If-Modified-Since`.
fn preconditions() -> impl Filter<Extract = (Preconditions,), Error = Infallible> + Clone {
    warp::header::headers_cloned().map(|headers| Preconditions::from_headers(&headers))
}

/// A lookup's items, parsed from a body of at most [`LOOKUP_MAX_BODY`] bytes
/// that arrives within `timeout`.
fn lookup_items(
    timeout: Duration,
) -> impl Filter<Extract = (Vec<(AddonId, Sha256)>,), Error = Rejection> + Clone {
    body_within(LOOKUP_MAX_BODY, timeout)
        .and_then(|body: Vec<u8>| async move { parse_lookup(&body).map_err(warp::reject::custom) })
}

/// The request body, refused with a 413 as soon as it is known to exceed
/// `max` bytes: before reading when `Content-Length` says so, else while
/// reading (chunked bodies have no `Content-Length`); refused with a 408
/// when it has not all arrived `timeout` after the head, so that a client
/// trickling its body can't hold a connection slot for ever.
fn body_within(
    max: u64,
    timeout: Duration,
) -> impl Filter<Extract = (Vec<u8>,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(move |declared: Option<u64>| async move {
            match declared {
                Some(length) if length > max => {
                    Err(warp::reject::custom(ApiError::PayloadTooLarge))
                }
                _ => Ok(()),
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(move |body| async move {
            tokio::time::timeout(timeout, read_within(body, max))
                .await
                .map_err(|_| warp::reject::custom(ApiError::BodyTimeout))?
        })
}

async fn read_within<B: Buf>(
    body: impl Stream<Item = Result<B, warp::Error>>,
    max: u64,
) -> Result<Vec<u8>, Rejection> {
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| ApiError::invalid("body", "could not be read to its end"))?;
        if (bytes.len() + chunk.remaining()) as u64 > max {
            return Err(warp::reject::custom(ApiError::PayloadTooLarge));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(bytes)
}

/// `{"items": [{"addon_id", "sha256"}, …]}` with 1 to 1000 valid items; the
/// error names the first invalid one. Other members are ignored.
fn parse_lookup(body: &[u8]) -> Result<Vec<(AddonId, Sha256)>, ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::invalid("body", "must be JSON: {\"items\": [...]}"))?;
    let items = body
        .get("items")
        .and_then(Value::as_array)
        .filter(|items| (1..=LOOKUP_MAX_ITEMS).contains(&items.len()))
        .ok_or(ApiError::invalid(
            "items",
            "must be a list of 1 to 1000 {\"addon_id\", \"sha256\"} objects",
        ))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = |name: &str| {
                item.get(name).and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(format!("items[{i}].{name}"), "must be a string")
                })
            };
            if !item.is_object() {
                return Err(ApiError::invalid(
                    format!("items[{i}]"),
                    "must be an object {\"addon_id\", \"sha256\"}",
                ));
            }
            let addon_id = AddonId::parse(text("addon_id")?)
                .map_err(|e| ApiError::invalid(format!("items[{i}].addon_id"), e.to_string()))?;
            let sha256 = Sha256::parse(text("sha256")?)
                .map_err(|e| ApiError::invalid(format!("items[{i}].sha256"), e.to_string()))?;
            Ok((addon_id, sha256))
        })
        .collect()
}

/// A JSON answer with an explicit `Content-Length`, which a HEAD keeps.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(e) => ApiError::Internal(format!("serialise answer: {e}")).response(),
    }
}

/// A JSON answer from its serialised body.
pub(crate) fn json_bytes(status: StatusCode, bytes: impl Into<Bytes>) -> Response {
    let bytes = bytes.into();
    let length = HeaderValue::from(bytes.len());
    let mut response = Response::new(bytes.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, length);
    response
}

/// The answer to a HEAD: the GET's status and headers (`Content-Length`
/// included), no body.
fn without_body(mut response: Response) -> Response {
    *response.body_mut() = Vec::new().into();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "5f0c3a5e0b9d2a4c8e7f6a5b4c3d2e1f00112233445566778899aabbccddeeff";

    fn message(e: ApiError) -> String {
        e.public_message().into_owned()
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        let guid = Segment("%7B3550f703-e582-4d05-9a08-453d09bdfdc6%7D".into());
        assert_eq!(
            parse_addon_id(&guid).unwrap().as_str(),
            "{3550f703-e582-4d05-9a08-453d09bdfdc6}"
        );
        let at = Segment("uBlock0%40raymondhill.net".into());
        assert_eq!(
            parse_addon_id(&at).unwrap().as_str(),
            "uBlock0@raymondhill.net"
        );
        let prefixed = Segment(format!("sha256%3A{}", HASH.to_uppercase()));
        assert_eq!(parse_sha256(&prefixed).unwrap().to_string(), HASH);
        for bad in ["%FF@x", "%7B", "a%2Fb@c", "plain"] {
            let e = parse_addon_id(&Segment(bad.into())).unwrap_err();
            assert!(message(e).starts_with("addon_id: "), "{bad}");
        }
        let e = parse_write_id(&Segment("a%20b".into())).unwrap_err();
        assert!(message(e).starts_with("write_id: "));
    }

    #[test]
    fn page_requests() {
        let query = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            PageRequest::parse(&query(&[("other", "x")])).unwrap(),
            PageRequest {
                after: None,
                limit: 100
            }
        );
        let page = PageRequest::parse(&query(&[("limit", "1000"), ("cursor", HASH)])).unwrap();
        assert_eq!(
            (page.limit, page.after.unwrap().to_string()),
            (1000, HASH.into())
        );
        for (key, bad) in [
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "-1"),
            ("limit", ""),
            ("limit", "ten"),
            ("cursor", "zz"),
            ("cursor", ""),
        ] {
            let e = PageRequest::parse(&query(&[(key, bad)])).unwrap_err();
            assert!(message(e).starts_with(&format!("{key}: ")), "{key}={bad}");
        }
    }

    #[test]
    fn lookup_bodies_name_the_first_bad_item() {
        let items = parse_lookup(
            format!(r#"{{"items": [{{"addon_id": "a@b", "sha256": "SHA256:{HASH}", "x": 1}}]}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(items[0].1.to_string(), HASH);
        let cases = [
            ("not json".to_string(), "body: "),
            ("[]".to_string(), "items: "),
            (r#"{"items": []}"#.to_string(), "items: "),
            (r#"{"items": {}}"#.to_string(), "items: "),
            (r#"{"items": [1]}"#.to_string(), "items[0]: "),
            (
                format!(
                    r#"{{"items": [{{"addon_id": "a@b", "sha256": "{HASH}"}}, {{"addon_id": "a@b", "sha256": "x"}}, {{"addon_id": "bad"}}]}}"#
                ),
                "items[1].sha256: must be 64 hex digits",
            ),
            (
                r#"{"items": [{"sha256": 5}]}"#.to_string(),
                "items[0].addon_id: must be a string",
            ),
        ];
        for (body, expected) in cases {
            let e = parse_lookup(body.as_bytes()).unwrap_err();
            assert!(message(e).starts_with(expected), "{body}");
        }
        let item = format!(r#"{{"addon_id": "a@b", "sha256": "{HASH}"}}"#);
        let many = |n: usize| format!(r#"{{"items": [{}]}}"#, vec![item.as_str(); n].join(","));
        assert_eq!(parse_lookup(many(1000).as_bytes()).unwrap().len(), 1000);
        assert!(parse_lookup(many(1001).as_bytes()).is_err());
    }

    #[test]
    fn pages_say_whether_there_is_more() {
        let record = |byte: u8| Record {
            addon_id: AddonId::parse("a@b").unwrap(),
            sha256: Sha256::from_bytes([byte; 32]),
            status: shared::record::Status::Registered,
            version: None,
            registered_at: None,
            updated_at: shared::domain::Timestamp::now(),
        };
        let page = Page::of(vec![record(1), record(2), record(3)], 2);
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next_cursor, Some("02".repeat(32)));
        let last = Page::of(vec![record(1), record(2)], 2);
        assert_eq!((last.items.len(), last.next_cursor), (2, None));
    }
}

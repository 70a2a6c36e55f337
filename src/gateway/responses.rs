//! The answers the gateway writes itself: redirects, the API version check, errors (OCI
//! JSON on registry paths), manifests from the cache, and whole error answers as bytes for
//! requests refused before Pingora parsed them.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::auth::relay::TokenAnswer;
use crate::routing::{Answer, Reply};
use crate::upstream::manifest_cache::CachedManifest;

/// Writes the answer: redirects and the version check with an empty body, errors with a JSON
/// (registry API) or text body; HEAD gets the headers only. This runs for every answer, so the
/// head has no case map (Pingora writes its names in their conventional case), its names are
/// constants, never parsed, and constant values are neither checked nor copied again.
pub async fn write_answer(session: &mut Session, answer: &Answer, head: bool) -> Result<()> {
    let status = answer.status().unwrap_or(500);
    let mut resp = ResponseHeader::build_no_case(status, Some(4))?;
    let body = match answer {
        Answer::Redirect { location, .. } => {
            resp.insert_header(header::LOCATION, value_of(location)?)?;
            None
        }
        Answer::ApiVersion => {
            resp.insert_header(API_VERSION, HeaderValue::from_static("registry/2.0"))?;
            None
        }
        Answer::Error {
            code, message, oci, ..
        } => {
            let (fields, body) = error_parts(status, code, message, *oci);
            insert_fields(&mut resp, fields)?;
            Some(body)
        }
        Answer::Unauthorized { challenge } => {
            resp.insert_header(header::WWW_AUTHENTICATE, value_of(challenge)?)?;
            let message = "authentication required";
            let (fields, body) = error_parts(status, "UNAUTHORIZED", message, true);
            insert_fields(&mut resp, fields)?;
            Some(body)
        }
        Answer::TooManyRequests { retry_after, oci } => {
            resp.insert_header(header::RETRY_AFTER, HeaderValue::from(*retry_after))?;
            let message = "too many requests from this client; retry later";
            let (fields, body) = error_parts(status, "TOOMANYREQUESTS", message, *oci);
            insert_fields(&mut resp, fields)?;
            Some(body)
        }
        Answer::Proxy { .. } | Answer::ProxyMirror { .. } | Answer::Token { .. } => {
            return Error::e_explain(
                ErrorType::InternalError,
                "a proxied answer is not written here",
            )
        }
    };
    let length = match body.as_ref().map_or(0, Bytes::len) {
        0 => HeaderValue::from_static("0"),
        len => HeaderValue::from(len),
    };
    resp.insert_header(header::CONTENT_LENGTH, length)?;
    match body {
        Some(body) if !head => {
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(body), true).await
        }
        _ => session.write_response_header(Box::new(resp), true).await,
    }
}

/// `Docker-Distribution-Api-Version`, which registry clients look for on `/v2/` and errors.
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// An error answer's fixed fields (not a hot path: their names are parsed).
fn insert_fields(
    resp: &mut ResponseHeader,
    fields: Vec<(&'static str, &'static str)>,
) -> Result<()> {
    for (name, value) in fields {
        resp.insert_header(name, HeaderValue::from_static(value))?;
    }
    Ok(())
}

/// A header value made from text the gateway composed (a location, a challenge); refused,
/// not written, if it holds what a header value cannot.
fn value_of(text: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(text)
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid header value"))
}

/// The headers of an error answer (its framing aside) and its body: OCI JSON
/// (`{"errors":[{"code":...,"message":...}]}`) with `Docker-Distribution-Api-Version` on
/// registry API paths, one line of text elsewhere; `Allow` with a `405`.
fn error_parts(
    status: u16,
    code: &str,
    message: &str,
    oci: bool,
) -> (Vec<(&'static str, &'static str)>, Bytes) {
    let mut headers = Vec::with_capacity(3);
    let body = if oci {
        headers.push(("Content-Type", "application/json; charset=utf-8"));
        headers.push(("Docker-Distribution-Api-Version", "registry/2.0"));
        let json = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
        Bytes::from(format!("{json}\n"))
    } else {
        headers.push(("Content-Type", "text/plain; charset=utf-8"));
        Bytes::from(format!("{message}\n"))
    };
    if status == 405 {
        headers.push(("Allow", "GET, HEAD"));
    }
    (headers, body)
}

/// A whole HTTP/1.1 error answer as bytes, for requests refused before Pingora parsed them;
/// the connection closes after it.
pub fn error_response_bytes(reply: &Reply, head: bool) -> Bytes {
    let Answer::Error {
        status,
        code,
        message,
        oci,
    } = &reply.answer
    else {
        return Bytes::new();
    };
    let (headers, body) = error_parts(*status, code, message, *oci);
    let reason = http::StatusCode::from_u16(*status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = BytesMut::from(out.as_bytes());
    if !head {
        bytes.extend_from_slice(&body);
    }
    bytes.freeze()
}

/// Writes a manifest from the cache; HEAD gets the headers only. A stale one says so.
pub async fn write_cached(
    session: &mut Session,
    cached: &CachedManifest,
    head: bool,
    stale: bool,
) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(cached.headers.len() + 2))?;
    for (name, value) in &cached.headers {
        resp.insert_header(*name, value.as_ref())?;
    }
    if stale {
        resp.insert_header("Warning", "110 archeio \"Response is Stale\"")?;
    }
    resp.insert_header("Content-Length", cached.body.len().to_string())?;
    if head {
        return session.write_response_header(Box::new(resp), true).await;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(cached.body.clone()), true)
        .await
}

/// Writes a token service's answer as relayed: status, `Content-Type`, body, and
/// `Cache-Control: no-store` (a token is a credential).
pub async fn write_token(session: &mut Session, answer: &TokenAnswer, head: bool) -> Result<()> {
    let mut resp = ResponseHeader::build(answer.status, Some(4))?;
    if let Some(content_type) = &answer.content_type {
        resp.insert_header("Content-Type", content_type.as_str())?;
    }
    resp.insert_header("Cache-Control", HeaderValue::from_static("no-store"))?;
    if let Some(challenge) = &answer.challenge {
        resp.insert_header("WWW-Authenticate", challenge.as_str())?;
    }
    resp.insert_header("Content-Length", answer.body.len())?;
    if head || answer.body.is_empty() {
        return session.write_response_header(Box::new(resp), true).await;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(answer.body.clone()), true)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_requests_are_answered_in_full() {
        let reply = Reply {
            route: crate::routing::Route::Invalid,
            answer: Answer::Error {
                status: 400,
                code: "NAME_INVALID",
                message: "bad".into(),
                oci: true,
            },
        };
        let text = String::from_utf8(error_response_bytes(&reply, false).to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        assert!(text
            .ends_with("\r\n\r\n{\"errors\":[{\"code\":\"NAME_INVALID\",\"message\":\"bad\"}]}\n"));
        let head = String::from_utf8(error_response_bytes(&reply, true).to_vec()).unwrap();
        assert!(
            head.ends_with("\r\n\r\n") && head.contains("Content-Length: 53"),
            "{head}"
        );
    }
}

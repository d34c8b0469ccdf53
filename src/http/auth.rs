//! Who may use the admin API (`/tenants...`): with `http.api_token` set,
//! requests must carry `Authorization: Bearer <token>` (else 401); without
//! one, only a listener on a loopback address serves it (else 403), so an
//! API reachable from the network never runs unauthenticated. The
//! monitoring routes do not pass through here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::HttpState;
use crate::config::HttpConfig;

/// Middleware for the API routes: runs the request only when [`check`] allows it.
pub async fn require_token(
    State(state): State<Arc<HttpState>>,
    request: Request,
    next: Next,
) -> Response {
    let config = state.ctx.config();
    match check(&config.http, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            let unauthorized = e.status == StatusCode::UNAUTHORIZED;
            let mut response = e.into_response();
            if unauthorized {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"pgtenant\""),
                );
            }
            response
        }
    }
}

/// Whether a request with `headers` may use the API under `http`.
pub fn check(http: &HttpConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    if http.api_token.is_empty() {
        return match http.addr() {
            Some(addr) if is_loopback(addr) => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the admin API is disabled: http.listen_addr {} is not a loopback address \
                     and http.api_token is empty; set http.api_token to use it",
                    http.listen_addr
                ),
            )),
        };
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given {
        Some(token) if same_secret(token, &http.api_token) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid API token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this API needs an \"Authorization: Bearer <token>\" header (http.api_token)",
        )),
    }
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The token of an `Authorization: Bearer <token>` value (scheme in any case).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(addr: &str, token: &str) -> HttpConfig {
        HttpConfig {
            listen_addr: addr.into(),
            api_token: token.into(),
            ..HttpConfig::default()
        }
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn loopback_without_token_is_open() {
        assert_eq!(
            check(&http("127.0.0.1:9930", ""), &HeaderMap::new()),
            Ok(())
        );
        assert_eq!(check(&http("[::1]:9930", ""), &HeaderMap::new()), Ok(()));
    }

    #[test]
    fn network_without_token_is_refused() {
        let e = check(&http("0.0.0.0:9930", ""), &HeaderMap::new()).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(e.message.contains("http.api_token"), "{}", e.message);
    }

    #[test]
    fn token_is_required_when_set() {
        let c = http("0.0.0.0:9930", "s3cret");
        assert_eq!(check(&c, &with_auth("Bearer s3cret")), Ok(()));
        assert_eq!(check(&c, &with_auth("bearer  s3cret ")), Ok(()));
        for bad in ["Bearer nope", "Basic s3cret", "Bearer", "s3cret"] {
            let e = check(&c, &with_auth(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{bad}");
        }
        let e = check(&c, &HeaderMap::new()).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    }
}

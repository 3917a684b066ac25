//! The HTTP client of the budget alert webhook: one `POST` of an alert's JSON with an
//! `Idempotency-Key` header, answered 2xx or not. HTTP/1.1 over plain TCP (`http://` URLs) with
//! hyper-util's pooled client; connections are kept alive between deliveries.
//!
//! Not here: retries and backoff, and what a delivery means for the alert ledger (see
//! [`crate::alerts`]). No TLS: put an `https` endpoint behind a local TLS-originating proxy.

use crate::{Error, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// A webhook endpoint.
#[derive(Clone)]
pub struct Webhook {
    uri: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// Check a webhook URL: `http://host[:port]/path`.
pub fn parse_url(url: &str) -> Result<Uri> {
    let uri: Uri = url.parse().map_err(|e| {
        Error::Config(format!(
            "--alerts-webhook {url:?} is not a URL ({e}); expected http://HOST[:PORT]/PATH"
        ))
    })?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(uri),
        Some("https") => Err(Error::Config(format!(
            "--alerts-webhook {url:?}: https is not supported (tokenmeter has no TLS stack); point it at a local TLS-originating proxy over http://"
        ))),
        _ => Err(Error::Config(format!(
            "--alerts-webhook {url:?} must be an http://HOST[:PORT]/PATH URL"
        ))),
    }
}

/// How one delivery went.
#[derive(Debug)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered(u16),
    /// Any other answer, or no answer (with why).
    Failed(String),
}

impl Webhook {
    /// A client for `url` (see [`parse_url`]); each request may take up to `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Webhook> {
        let uri = parse_url(url)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .http1_title_case_headers(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Webhook {
            uri,
            client,
            timeout,
        })
    }

    /// The endpoint.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// `POST` `body` (JSON) with `Idempotency-Key: key`.
    pub async fn post(&self, key: &str, body: Bytes) -> Outcome {
        let req = match hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .header(
                hyper::header::USER_AGENT,
                concat!("tokenmeter/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
        {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("building the request: {e}")),
        };
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // The client's error says little by itself; its source says what failed.
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(c) = src {
                    s.push_str(": ");
                    s.push_str(&c.to_string());
                    src = c.source();
                }
                s
            })?;
            let status = resp.status();
            // Read the answer to its end so the connection can be reused.
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Outcome::Failed(format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => Outcome::Failed(e),
            Ok(Ok((status, _))) if status.is_success() => Outcome::Delivered(status.as_u16()),
            Ok(Ok((status, body))) => Outcome::Failed(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_plain_http() {
        assert!(parse_url("http://127.0.0.1:8080/hooks/budget").is_ok());
        let e = parse_url("https://example.com/x").unwrap_err().to_string();
        assert!(e.contains("https is not supported"), "{e}");
        assert!(parse_url("ftp://x/y").is_err());
        assert!(parse_url("not a url").is_err());
    }
}

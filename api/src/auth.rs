//! API keys and the rate limit. A key is bound to one tenant, or is an admin key (every tenant).
//! Keys come in `Authorization: Bearer <key>` or `X-Api-Key`; GET requests may also carry
//! `?api_key=` (a browser's EventSource cannot set headers).

use crate::error::ApiError;
use crate::state::{ApiState, Scope};
use axum::http::{HeaderMap, Method, StatusCode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct ApiKey {
    pub key: String,
    /// `None` for an admin key.
    pub tenant: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    by_key: HashMap<String, Option<String>>,
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = ApiKey>) -> Self {
        ApiKeys { by_key: keys.into_iter().map(|k| (k.key, k.tenant)).collect() }
    }

    fn scope_of(&self, key: &str) -> Option<Scope> {
        // A constant-time compare per key would hide which prefix matched; a hash lookup leaks
        // nothing useful about a random key of fixed length, and keeps lookups O(1).
        self.by_key.get(key).map(|tenant| match tenant {
            Some(tenant) => Scope::Tenant(tenant.clone()),
            None => Scope::All,
        })
    }
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub scope: Scope,
    /// The API key, for per-key limits.
    pub key: String,
}

impl Caller {
    /// The tenant a tenant-scoped request acts for: the key's, or for an admin key the one named
    /// in the request.
    pub fn tenant(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match (&self.scope, requested) {
            (Scope::Tenant(own), None) => Ok(own.clone()),
            (Scope::Tenant(own), Some(other)) if other == own => Ok(own.clone()),
            (Scope::Tenant(own), Some(other)) => {
                Err(ApiError::forbidden(format!("this API key belongs to tenant `{own}` and cannot act for tenant `{other}`")))
            }
            (Scope::All, Some(tenant)) => Ok(tenant.to_owned()),
            (Scope::All, None) => Err(ApiError::bad_request("missing_tenant", "an admin key must name the tenant: add ?tenant=…")),
        }
    }
}

/// Finds the caller's key and charges the rate limit.
pub fn authenticate(state: &ApiState, method: &Method, headers: &HeaderMap, query: Option<&str>) -> Result<Caller, ApiError> {
    let key = key_from(method, headers, query).ok_or_else(|| {
        ApiError::unauthorized("missing API key: send `Authorization: Bearer <key>` or `X-Api-Key: <key>`")
    })?;
    let scope = state.keys.scope_of(&key).ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
    state.rate.charge(&key)?;
    Ok(Caller { scope, key })
}

fn key_from(method: &Method, headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        if let Some(key) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
            return Some(key.trim().to_owned());
        }
    }
    if let Some(value) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(value.trim().to_owned());
    }
    if method == Method::GET {
        let query = query?;
        return url_query_value(query, "api_key");
    }
    None
}

/// The decoded value of `name` in a URL query string.
pub fn url_query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let hex = |byte: u8| (byte as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push(high << 4 | low);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A token bucket per key: `rate` tokens a second up to `burst`; a request takes one.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter { rate: rate.max(0.001), burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    pub fn charge(&self, key: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64;
        Err(ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests for this API key (limit {} per second, bursts of {}); retry in {wait} s", self.rate, self.burst),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_refuses_until_it_refills() {
        let limiter = RateLimiter::new(1000.0, 3.0);
        for _ in 0..3 {
            limiter.charge("k").expect("within the burst");
        }
        let refused = limiter.charge("k").expect_err("over the burst");
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        limiter.charge("other").expect("buckets are per key");
        std::thread::sleep(std::time::Duration::from_millis(5));
        limiter.charge("k").expect("refilled");
    }

    #[test]
    fn keys_are_read_from_headers_and_from_the_query_of_gets_only() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer abc".parse().expect("header"));
        assert_eq!(key_from(&Method::POST, &headers, None).as_deref(), Some("abc"));
        let empty = HeaderMap::new();
        assert_eq!(key_from(&Method::GET, &empty, Some("tables=x&api_key=k%2B1")).as_deref(), Some("k+1"));
        assert_eq!(key_from(&Method::POST, &empty, Some("api_key=k")), None);
    }

    #[test]
    fn a_tenant_key_cannot_act_for_another_tenant() {
        let caller = Caller { scope: Scope::Tenant("a".to_owned()), key: "k".to_owned() };
        assert_eq!(caller.tenant(None).expect("own"), "a");
        assert_eq!(caller.tenant(Some("b")).expect_err("other").status, StatusCode::FORBIDDEN);
        let admin = Caller { scope: Scope::All, key: "admin".to_owned() };
        assert_eq!(admin.tenant(Some("b")).expect("admin"), "b");
        assert!(admin.tenant(None).is_err());
    }
}

//! API keys and the rate limit. A key is bound to one tenant, or is an admin key (every tenant).
//! Keys come in `Authorization: Bearer <key>` or `X-Api-Key`; GET requests may also carry
//! `?api_key=` (a browser's EventSource cannot set headers).

use crate::error::ApiError;
use crate::state::{ApiState, Scope};
use axum::http::{HeaderMap, Method, StatusCode};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

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
            (Scope::Tenant(own), Some(other)) => Err(ApiError::forbidden(format!(
                "this API key belongs to tenant `{own}` and cannot act for tenant `{other}`"
            ))),
            (Scope::All, Some(tenant)) => Ok(tenant.to_owned()),
            (Scope::All, None) => {
                Err(ApiError::bad_request("missing_tenant", "an admin key must name the tenant: add ?tenant=…"))
            }
        }
    }
}

/// Finds the caller's key and charges the rate limit.
pub fn authenticate(
    state: &ApiState,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Caller, ApiError> {
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

/// Requests per second per key, with bursts: governor's GCRA keyed by API key. Only known keys
/// are charged (after authentication), so the number of keys it remembers is bounded by the
/// configuration.
pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    rate: f64,
    burst: NonZeroU32,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        let rate = rate.max(0.001);
        let burst = NonZeroU32::new(burst.clamp(1.0, u32::MAX as f64) as u32).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
        RateLimiter { limiter: DefaultKeyedRateLimiter::keyed(quota), rate, burst }
    }

    /// Charges one request to `key`.
    pub fn charge(&self, key: &str) -> Result<(), ApiError> {
        self.check(key, NonZeroU32::MIN, "too many requests for this API key")
    }

    /// Charges `cost` more requests to `key`, whose request was charged one already: all or
    /// nothing, and at most a burst less one, so a key with a full bucket can pay for any request.
    /// `what` starts the message of the 429.
    pub fn charge_more(&self, key: &str, cost: u64, what: &str) -> Result<(), ApiError> {
        let cost = u32::try_from(cost).unwrap_or(u32::MAX).min(self.burst.get() - 1);
        match NonZeroU32::new(cost) {
            Some(cost) => self.check(key, cost, what),
            None => Ok(()),
        }
    }

    fn check(&self, key: &str, cost: NonZeroU32, what: &str) -> Result<(), ApiError> {
        let Ok(Err(not_until)) = self.limiter.check_key_n(&key.to_owned(), cost) else {
            // `cost` is at most the burst, so the check never finds it beyond capacity.
            return Ok(());
        };
        let wait = not_until.wait_time_from(self.limiter.clock().now()).as_secs_f64().ceil().max(1.0) as u64;
        Err(ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{what} (limit {} per second, bursts of {}); retry in {wait} s", self.rate, self.burst),
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
    fn a_charge_of_many_takes_them_all_or_none_and_never_more_than_a_burst() {
        let limiter = RateLimiter::new(0.001, 10.0);
        limiter.charge("k").expect("1 of 10");
        limiter.charge_more("k", 3, "x").expect("4 of 10");
        limiter.charge_more("k", 7, "x").expect_err("6 left");
        limiter.charge_more("k", 6, "x").expect("the refused charge took nothing");
        limiter.charge("k").expect_err("spent");
        limiter.charge("fresh").expect("1 of 10");
        limiter.charge_more("fresh", 1_000, "x").expect("a full bucket pays for any request");
        limiter.charge("fresh").expect_err("the whole burst was taken");
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

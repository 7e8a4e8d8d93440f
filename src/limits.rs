//! In-process rate limits: per caller on `/users/lookup`, per client IP on the auth
//! routes (governor, GCRA), and failed logins per account (SECURITY.md 11, 21).
//!
//! They are per instance: behind a load balancer with N instances a client gets up to N
//! times the budget. Failed logins are counted per address whether or not an account
//! exists, so the throttle reveals nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::{ApiError, ApiResult};

/// `/users/lookup` calls allowed per caller per minute (SECURITY.md 11).
pub const LOOKUPS_PER_MINUTE: u32 = 30;
/// Failed logins allowed per address in [`FAILED_LOGIN_WINDOW_MINUTES`].
pub const MAX_FAILED_LOGINS: usize = 10;
pub const FAILED_LOGIN_WINDOW_MINUTES: i64 = 15;

pub struct Limits {
    lookup: DefaultKeyedRateLimiter<String>,
    auth: DefaultKeyedRateLimiter<IpAddr>,
    failed_logins: Mutex<HashMap<String, Vec<DateTime<Utc>>>>,
    clock: DefaultClock,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(60)
    }
}

fn too_many(wait: std::time::Duration) -> ApiError {
    ApiError::TooManyRequests {
        retry_after_secs: wait.as_secs() + 1,
    }
}

impl Limits {
    pub fn new(auth_per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(LOOKUPS_PER_MINUTE).expect("non-zero");
        let auth_per_minute = NonZeroU32::new(auth_per_minute.max(1)).expect("non-zero");
        Self {
            lookup: RateLimiter::dashmap(Quota::per_minute(per_minute)),
            auth: RateLimiter::dashmap(Quota::per_minute(auth_per_minute)),
            failed_logins: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// 429 with `Retry-After` once a client IP has used up its auth budget.
    pub fn check_auth(&self, ip: IpAddr) -> ApiResult<()> {
        self.auth.check_key(&ip).map_err(|not_until| {
            crate::metrics::metrics().rate_limited("auth_ip");
            too_many(not_until.wait_time_from(self.clock.now()))
        })
    }

    /// 429 while an address has too many recent failed logins.
    pub fn check_login(&self, email: &str, now: DateTime<Utc>) -> ApiResult<()> {
        let window = Duration::minutes(FAILED_LOGIN_WINDOW_MINUTES);
        let mut map = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        let Some(failures) = map.get_mut(email) else {
            return Ok(());
        };
        failures.retain(|at| *at > now - window);
        if failures.len() < MAX_FAILED_LOGINS {
            return Ok(());
        }
        let oldest = failures.iter().min().copied().unwrap_or(now);
        let wait = (oldest + window - now).to_std().unwrap_or_default();
        crate::metrics::metrics().rate_limited("failed_logins");
        Err(too_many(wait))
    }

    pub fn record_failed_login(&self, email: &str, now: DateTime<Utc>) {
        let mut map = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(email.to_owned()).or_default().push(now);
    }

    /// 429 with `Retry-After` once the caller has used up its lookups.
    pub fn check_lookup(&self, user_id: &str) -> ApiResult<()> {
        self.lookup
            .check_key(&user_id.to_owned())
            .map_err(|not_until| {
                crate::metrics::metrics().rate_limited("lookup");
                let wait = not_until.wait_time_from(self.clock.now());
                ApiError::TooManyRequests {
                    retry_after_secs: wait.as_secs() + 1,
                }
            })
    }

    /// Forgets callers whose budget is full again (keeps memory bounded).
    pub fn retain_recent(&self, now: DateTime<Utc>) {
        self.lookup.retain_recent();
        self.auth.retain_recent();
        let window = Duration::minutes(FAILED_LOGIN_WINDOW_MINUTES);
        let mut map = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, failures| {
            failures.retain(|at| *at > now - window);
            !failures.is_empty()
        });
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", xff.parse().unwrap());
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            client_ip(stranger, &headers("1.2.3.4"), &trusted),
            stranger,
            "spoofed header from a client"
        );
        assert_eq!(
            client_ip(proxy, &headers("198.51.100.7"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(proxy, &headers("6.6.6.6, 198.51.100.7, 10.1.2.3"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap(),
            "the client cannot prepend its own entries"
        );
        assert_eq!(
            client_ip(proxy, &axum::http::HeaderMap::new(), &trusted),
            proxy
        );
        assert_eq!(
            client_ip(proxy, &headers("garbage"), &[]),
            proxy,
            "no trusted proxies: the peer"
        );
    }

    #[test]
    fn failed_logins_lock_an_address_for_the_window() {
        let limits = Limits::new(60);
        let now = Utc::now();
        for _ in 0..MAX_FAILED_LOGINS {
            assert!(limits.check_login("a@example.com", now).is_ok());
            limits.record_failed_login("a@example.com", now);
        }
        assert!(limits.check_login("a@example.com", now).is_err());
        assert!(limits.check_login("b@example.com", now).is_ok());
        let later = now + Duration::minutes(FAILED_LOGIN_WINDOW_MINUTES) + Duration::seconds(1);
        assert!(limits.check_login("a@example.com", later).is_ok());
    }
}

//! What a session remembers about the device that opened it: a short client description
//! made from the `User-Agent` header and a coarse network address (SECURITY.md 32: both
//! are bounded, text-safe values derived from the input, never the raw header).
//!
//! - The client description is "Browser on OS" for the browsers and systems people
//!   recognise, else the first product token of the header (`curl`, `okhttp`), else
//!   "Unknown client". Only the first [`MAX_USER_AGENT_SCAN`] bytes are read, the result
//!   is at most [`MAX_CLIENT_CHARS`] characters of `[A-Za-z0-9 ._-]`.
//! - The address is the network, not the host: an IPv4 address's /24, an IPv6 address's
//!   /48 (an IPv4-mapped IPv6 address counts as IPv4). Enough to tell "home" from "a
//!   country away", not enough to point at one machine.

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::header::USER_AGENT;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::limits::ClientIp;
use crate::startup::AppState;

/// Only this much of a `User-Agent` header is looked at.
pub const MAX_USER_AGENT_SCAN: usize = 512;
/// Longest client description.
pub const MAX_CLIENT_CHARS: usize = 48;
/// The description when the header says nothing we can use.
pub const UNKNOWN_CLIENT: &str = "Unknown client";

/// The device a session was opened from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// A short description of the client, e.g. "Firefox on Linux".
    pub client: String,
    /// The coarse network, e.g. `203.0.113.0/24`.
    pub ip: String,
}

impl Device {
    pub fn new(user_agent: Option<&[u8]>, ip: IpAddr) -> Self {
        Self {
            client: describe_client(user_agent),
            ip: coarse_ip(ip),
        }
    }
}

impl FromRequestParts<AppState> for Device {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        let user_agent = parts.headers.get(USER_AGENT).map(|v| v.as_bytes());
        Ok(Self::new(user_agent, ip))
    }
}

/// The network an address belongs to: IPv4 /24, IPv6 /48.
pub fn coarse_ip(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let network = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
            format!("{network}/48")
        }
    }
}

/// Browsers, most specific first: several of them also name the ones below (Edge says
/// "Chrome" and "Safari", Chrome says "Safari").
const BROWSERS: &[(&str, &str)] = &[
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("OPR/", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
];

/// Systems, most specific first (Android and ChromeOS also say "Linux", iOS says
/// "like Mac OS X").
const SYSTEMS: &[(&str, &str)] = &[
    ("Android", "Android"),
    ("CrOS", "ChromeOS"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("Macintosh", "macOS"),
    ("Linux", "Linux"),
];

/// A short, safe description of the client behind a `User-Agent` header.
pub fn describe_client(user_agent: Option<&[u8]>) -> String {
    let Some(raw) = user_agent else {
        return UNKNOWN_CLIENT.to_owned();
    };
    let raw = &raw[..raw.len().min(MAX_USER_AGENT_SCAN)];
    let text = String::from_utf8_lossy(raw);
    let find = |table: &[(&'static str, &'static str)]| {
        table
            .iter()
            .find(|(needle, _)| text.contains(needle))
            .map(|(_, name)| *name)
    };
    let browser = text
        .starts_with("Mozilla/")
        .then(|| find(BROWSERS))
        .flatten();
    match (browser, find(SYSTEMS)) {
        (Some(browser), Some(system)) => format!("{browser} on {system}"),
        (Some(browser), None) => browser.to_owned(),
        (None, _) => product_token(&text).unwrap_or_else(|| UNKNOWN_CLIENT.to_owned()),
    }
}

/// The first product name of a header (`curl/8.5.0` → `curl`), if it is plain text.
fn product_token(text: &str) -> Option<String> {
    let token: String = text
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(MAX_CLIENT_CHARS)
        .collect();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_browsers_are_named_with_their_system() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                "Firefox on Linux",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
                "Safari on iOS",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
                "Chrome on Android",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
                "Safari on macOS",
            ),
        ];
        for (ua, expected) in cases {
            assert_eq!(describe_client(Some(ua.as_bytes())), expected, "{ua}");
        }
    }

    #[test]
    fn other_clients_are_named_by_their_first_product_token() {
        assert_eq!(describe_client(Some(b"curl/8.5.0")), "curl");
        assert_eq!(describe_client(Some(b"okhttp/4.12.0")), "okhttp");
        assert_eq!(
            describe_client(Some(b"python-requests/2.32")),
            "python-requests"
        );
        assert_eq!(describe_client(None), UNKNOWN_CLIENT);
        assert_eq!(describe_client(Some(b"")), UNKNOWN_CLIENT);
        assert_eq!(describe_client(Some(b"<script>")), UNKNOWN_CLIENT);
    }

    #[test]
    fn descriptions_are_short_plain_text_whatever_the_header() {
        let long = "a".repeat(10_000);
        let hostile: [&[u8]; 4] = [
            long.as_bytes(),
            b"evil\x00\x1b[31mred",
            "\u{202e}reversed/1.0".as_bytes(),
            b"\xff\xfe binary",
        ];
        for ua in hostile {
            let client = describe_client(Some(ua));
            assert!(client.chars().count() <= MAX_CLIENT_CHARS, "{client}");
            assert!(
                client
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || " ._-".contains(c)),
                "{client:?}"
            );
        }
    }

    #[test]
    fn addresses_are_reduced_to_their_network() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(coarse_ip(ip("203.0.113.77")), "203.0.113.0/24");
        assert_eq!(coarse_ip(ip("2001:db8:abcd:12::1")), "2001:db8:abcd::/48");
        assert_eq!(coarse_ip(ip("::ffff:198.51.100.9")), "198.51.100.0/24");
        assert_eq!(coarse_ip(ip("::1")), "::/48");
    }
}

//! The connection caps: how many connections are open, how many each
//! client address holds (IPv6 by its /64), how many requests each client
//! behind a trusted proxy has in flight, and which forwarded address that
//! client is.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use tokio::sync::Semaphore;

use crate::config::HttpConfig;

/// The open connections' counts, shared by the accept loop and the
/// connections themselves.
pub(super) struct ConnectionGate {
    /// `http.max-connections`.
    pub(super) slots: Arc<Semaphore>,
    max_connections: usize,
    /// `http.probe-connections`, past the cap.
    pub(super) probe_slots: Arc<Semaphore>,
    /// Open connections per client address (not trusted proxies').
    pub(super) per_address: Arc<AddressCounts>,
    /// Requests in flight per forwarded client address, through trusted
    /// proxies.
    pub(super) forwarded: Arc<AddressCounts>,
    pub(super) limits: HttpConfig,
}

impl ConnectionGate {
    pub(super) fn new(limits: &HttpConfig) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            max_connections: limits.max_connections,
            probe_slots: Arc::new(Semaphore::new(limits.probe_connections)),
            per_address: Arc::new(AddressCounts::new(limits.max_connections_per_address)),
            forwarded: Arc::new(AddressCounts::new(limits.max_connections_per_address)),
            limits: limits.clone(),
        }
    }

    /// Whether three quarters of `http.max-connections` are open, when
    /// idle connections give way to new ones.
    pub(super) fn under_pressure(&self) -> bool {
        let open = self.max_connections - self.slots.available_permits();
        open * 4 >= self.max_connections * 3
    }
}

/// How many of something (connections, requests) each client address
/// holds, bounded. IPv6 addresses count by their /64, which one host
/// commonly holds whole.
pub(super) struct AddressCounts {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressCounts {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// One more for `address`, or `None` if it holds the limit already.
    pub(super) fn claim(self: &Arc<Self>, address: IpAddr) -> Option<AddressClaim> {
        let key = address_key(address);
        let mut counts = self.counts.lock().expect("address counts lock");
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressClaim {
            counts: self.clone(),
            key,
        })
    }
}

/// What an address's count is keyed by.
fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// One counted connection or request of an address, given back on drop.
pub(super) struct AddressClaim {
    counts: Arc<AddressCounts>,
    key: IpAddr,
}

impl Drop for AddressClaim {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().expect("address counts lock");
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The client address a request through a trusted proxy came from: the
/// last address in `X-Forwarded-For` that is not itself a trusted proxy
/// (earlier entries are the client's to write, so they are not believed).
/// The proxy's own address when the header is absent or unreadable.
pub(super) fn forwarded_client(headers: &HeaderMap, proxy: IpAddr, limits: &HttpConfig) -> IpAddr {
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    for entry in entries.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(address) if limits.is_trusted_proxy(address) => continue,
            Ok(address) => return address.to_canonical(),
            Err(_) => return proxy,
        }
    }
    proxy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits_trusting(proxies: &[&str]) -> HttpConfig {
        HttpConfig {
            trusted_proxies: proxies
                .iter()
                .map(|p| (*p).to_owned().try_into().expect("a range"))
                .collect(),
            ..HttpConfig::default()
        }
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().expect("a header value"));
        }
        headers
    }

    #[test]
    fn the_client_is_the_last_forwarded_address_that_is_not_a_trusted_proxy() {
        let limits = limits_trusting(&["10.0.0.0/8"]);
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let client = |values: &[&str]| forwarded_client(&forwarded(values), proxy, &limits);
        assert_eq!(
            client(&["203.0.113.9"]),
            "203.0.113.9".parse::<IpAddr>().expect("ip")
        );
        // Entries before the client's are the client's to write.
        assert_eq!(
            client(&["198.51.100.1, 203.0.113.9, 10.0.0.2"]),
            "203.0.113.9".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            client(&["198.51.100.1", "203.0.113.9"]),
            "203.0.113.9".parse::<IpAddr>().expect("ip")
        );
        // Nothing readable, or only proxies: the proxy itself.
        assert_eq!(client(&[]), proxy);
        assert_eq!(client(&["10.0.0.3"]), proxy);
        assert_eq!(client(&["203.0.113.9, garbage"]), proxy);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let key = |a: &str| address_key(a.parse().expect("ip"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }

    #[test]
    fn an_address_holds_at_most_its_limit_until_it_gives_some_back() {
        let counts = Arc::new(AddressCounts::new(2));
        let address: IpAddr = "192.0.2.1".parse().expect("ip");
        let first = counts.claim(address).expect("first");
        let _second = counts.claim(address).expect("second");
        assert!(counts.claim(address).is_none());
        assert!(counts.claim("192.0.2.2".parse().expect("ip")).is_some());
        drop(first);
        assert!(counts.claim(address).is_some());
    }
}

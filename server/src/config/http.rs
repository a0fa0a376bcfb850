//! `[http]`: the listener's timeouts, its connection caps, and the proxies
//! whose `X-Forwarded-For` is believed.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[http]`: timeouts and the connection caps. Durations are written as
/// `30s`, `2m`, `1h`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpConfig {
    /// Time a client has to send a request's headers; also the longest a
    /// kept-alive connection may sit idle between requests.
    #[serde(default = "default_header_timeout", with = "duration")]
    pub header_timeout: Duration,
    /// Longest a request body (an upload) may go without a byte arriving.
    #[serde(default = "default_body_timeout", with = "duration")]
    pub body_timeout: Duration,
    /// Connections served at once; more are closed as they arrive (but
    /// for the `probe-connections` past it).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address may hold open at once (IPv6
    /// addresses count by their /64); more are closed as they arrive.
    /// Trusted proxies are exempt: through them the limit applies to
    /// requests in flight per forwarded address instead.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Connections accepted past `max-connections` that answer only
    /// `/_health` and `/metrics` (one request each, then closed), so probes
    /// still get through when every other slot is taken.
    #[serde(default = "default_probe_connections")]
    pub probe_connections: usize,
    /// When three quarters of `max-connections` are open, a connection
    /// whose last request began this long ago is closed (after the
    /// response in flight, if any) instead of waiting out
    /// `header-timeout`.
    #[serde(default = "default_idle_timeout_under_pressure", with = "duration")]
    pub idle_timeout_under_pressure: Duration,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` is
    /// believed. Their connections are exempt from
    /// `max-connections-per-address`; the forwarded client address is
    /// limited per request instead. Empty: no header is believed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<AddressRange>,
    /// How long shutdown waits for requests in flight before closing them.
    #[serde(default = "default_shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            probe_connections: default_probe_connections(),
            idle_timeout_under_pressure: default_idle_timeout_under_pressure(),
            trusted_proxies: Vec::new(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

impl HttpConfig {
    /// Whether `address` is one of `trusted-proxies`.
    pub fn is_trusted_proxy(&self, address: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|r| r.contains(address))
    }

    /// Checks `max-connections` and `max-connections-per-address`.
    pub(super) fn validate_connection_caps(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "http.max-connections",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_connections_per_address == 0 {
            return Err(ConfigError::Invalid {
                key: "http.max-connections-per-address",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// Checks that the timeouts that bound a client are longer than zero.
    pub(super) fn validate_timeouts(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("http.header-timeout", self.header_timeout),
            ("http.body-timeout", self.body_timeout),
            (
                "http.idle-timeout-under-pressure",
                self.idle_timeout_under_pressure,
            ),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be longer than zero".into(),
                });
            }
        }
        Ok(())
    }
}

/// An address or a CIDR range (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`), as
/// written in `trusted-proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AddressRange {
    network: IpAddr,
    prefix: u8,
}

impl AddressRange {
    /// Whether `address` is in the range. An IPv4-mapped IPv6 address
    /// counts as the IPv4 address it maps.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for AddressRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.as_str(), None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let network = network.to_canonical();
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0..={bits}"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl From<AddressRange> for String {
    fn from(range: AddressRange) -> Self {
        format!("{}/{}", range.network, range.prefix)
    }
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_address() -> usize {
    // Nix opens up to 25 (`http-connections`) per process, and a CI host
    // runs several, or several hosts share one NAT address; benchmarks
    // from one address use 64. Eight such addresses fill the default cap.
    128
}
fn default_probe_connections() -> usize {
    16
}
fn default_idle_timeout_under_pressure() -> Duration {
    Duration::from_secs(5)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

#[cfg(test)]
mod tests {
    use super::HttpConfig;
    use crate::config::test_support::{key_line, parse};

    #[test]
    fn trusted_proxies_take_addresses_and_cidr_ranges() {
        let config = parse(&format!(
            "{}[http]\ntrusted-proxies = [\"10.1.0.0/16\", \"192.0.2.7\", \"fd00::/8\"]\n",
            key_line()
        ))
        .expect("parses");
        let http = &config.http;
        for trusted in ["10.1.200.3", "192.0.2.7", "fd12::1", "::ffff:10.1.0.1"] {
            assert!(
                http.is_trusted_proxy(trusted.parse().expect("ip")),
                "{trusted}"
            );
        }
        for untrusted in ["10.2.0.1", "192.0.2.8", "fe80::1", "127.0.0.1"] {
            assert!(
                !http.is_trusted_proxy(untrusted.parse().expect("ip")),
                "{untrusted}"
            );
        }
        assert!(!HttpConfig::default().is_trusted_proxy("127.0.0.1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nowhere", "::/129", "10.0.0.0/x"] {
            let err = parse(&format!(
                "{}[http]\ntrusted-proxies = [\"{bad}\"]\n",
                key_line()
            ))
            .expect_err(bad);
            assert!(err.to_string().contains("trusted-proxies"), "{bad}: {err}");
        }
    }

    #[test]
    fn connection_limits_that_cannot_work_are_refused() {
        for (text, key) in [
            (
                "[http]\nmax-connections-per-address = 0\n",
                "http.max-connections-per-address",
            ),
            (
                "[http]\nidle-timeout-under-pressure = \"0s\"\n",
                "http.idle-timeout-under-pressure",
            ),
            ("metrics-token = \"short\"\n", "metrics-token"),
        ] {
            let err = parse(&format!("{}{text}", key_line())).expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }
}

//! TRUSTED_PROXIES, and the address forms proxies write: an address or a CIDR, with or without
//! brackets and a port (`10.0.0.1:443`, `[::1]:8080`, `[2001:db8::]/32`). Apart from
//! `client_ip`, so that `config` can parse the setting without depending on the HTTP layer.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// TRUSTED_PROXIES: the proxies whose `X-Forwarded-For` entries are believed. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

/// An entry of TRUSTED_PROXIES that is neither an address nor a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP address or a CIDR")]
pub struct BadProxy(pub String);

impl TrustedProxies {
    /// Parses entries such as `127.0.0.1`, `10.0.0.0/8`, `[::1]:8080`, `10.0.0.1:443`,
    /// `2001:db8::/32`, `[2001:db8::]/32` or `[2001:db8::/32]`. A port is ignored: a proxy is
    /// known by its address.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadProxy> {
        let nets: Result<Vec<IpNet>, BadProxy> = entries
            .iter()
            .map(|entry| parse_net(entry.as_ref()).ok_or_else(|| BadProxy(entry.as_ref().to_owned())))
            .collect();
        Ok(Self(nets?.into()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
pub(crate) fn parse_entry(entry: &str) -> Option<IpAddr> {
    let (host, port) = split_host_port(entry)?;
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return None;
    }
    host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// A TRUSTED_PROXIES entry: an address or a CIDR, with or without brackets and a port.
fn parse_net(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    let (body, prefix_len) = match entry.strip_prefix('[') {
        // `[2001:db8::/32]`, `[2001:db8::]/32`, `[::1]:8080`, `[::1]`
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            match (inside.split_once('/'), after) {
                (Some((addr, len)), "") => (addr, Some(len)),
                (None, "") => (inside, None),
                (None, after) if after.starts_with('/') => (inside, Some(&after[1..])),
                (None, after) => {
                    after.strip_prefix(':')?.parse::<u16>().ok()?;
                    (inside, None)
                }
                _ => return None,
            }
        }
        None => match entry.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => {
                let (host, port) = split_host_port(entry)?;
                if port.is_some_and(|p| p.parse::<u16>().is_err()) {
                    return None;
                }
                (host, None)
            }
        },
    };
    let ip = body.parse::<IpAddr>().ok()?.to_canonical();
    let full = if ip.is_ipv4() { 32 } else { 128 };
    let len = match prefix_len {
        Some(len) if len.bytes().all(|b| b.is_ascii_digit()) && !len.is_empty() => len.parse::<u8>().ok()?,
        Some(_) => return None,
        None => full,
    };
    // A v4-mapped CIDR (`::ffff:10.0.0.0/104`) names the IPv4 network inside.
    let len = match (body.parse::<IpAddr>().ok()?, ip) {
        (IpAddr::V6(_), IpAddr::V4(_)) if prefix_len.is_some() => len.checked_sub(96)?,
        _ => len,
    };
    IpNet::new(ip, len).ok().map(|net| net.trunc())
}

/// Splits `host:port`, `[v6]:port`, `[v6]` and a bare address; the port is not checked here.
fn split_host_port(entry: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match entry.split_once(':') {
        // One colon: IPv4 with a port. More: a bare IPv6 address.
        Some((host, port)) if !port.contains(':') => Some((host, Some(port))),
        _ => Some((entry, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxy_entries_parse_with_brackets_ports_and_prefixes() {
        let proxies = TrustedProxies::parse(&[
            "127.0.0.1",
            "10.0.0.0/8",
            "[::1]:8080",
            "192.0.2.1:443",
            "[2001:db8::/32]",
            "[2001:db9::]/32",
            "2001:dba::/32",
            "::ffff:172.16.0.0/108",
        ])
        .expect("valid");
        for ip in [
            "127.0.0.1",
            "10.200.0.1",
            "::1",
            "192.0.2.1",
            "2001:db8:ffff::1",
            "2001:db9::1",
            "2001:dba::1",
            "172.31.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(proxies.contains(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["127.0.0.2", "11.0.0.1", "::2", "192.0.2.2", "2001:dbb::1", "172.32.0.1"] {
            assert!(!proxies.contains(ip.parse().expect("ip")), "{ip}");
        }
        for bad in [
            "localhost",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.1:http",
            "[::1",
            "[::1]x",
            "::1/129",
            "10.0.0.1:70000",
        ] {
            assert_eq!(TrustedProxies::parse(&[bad]), Err(BadProxy(bad.to_owned())), "{bad}");
        }
    }
}

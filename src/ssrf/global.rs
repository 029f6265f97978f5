//! What an address reaches, for the callback policy: this host's loopback, a cloud metadata
//! service, somewhere not globally routable, or the Internet. "Globally routable" follows the
//! IANA special-purpose registries (IPv4 and IPv6, "Globally Reachable" = False) and the IPv6
//! address space registry (only 2000::/3 is global unicast). Addresses that embed an IPv4
//! address (IPv4-mapped, -translated, -compatible, NAT64, 6to4, Teredo, ISATAP) are judged by it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::{Ipv4Net, Ipv6Net};

/// Where a connection to an address ends up, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reach {
    /// A cloud instance metadata service: refused under every setting.
    Metadata,
    /// This host: loopback, and the unspecified addresses (a connect to 0.0.0.0 or :: lands here).
    Loopback,
    /// Private, shared, link-local, documentation, benchmarking, multicast, reserved...
    NotGlobal,
    Global,
}

/// Metadata services, wherever they sit. 168.63.129.16 is public space, so no range test
/// catches it; the others are listed so that BLOCK_PRIVATE_IPS=false still refuses them.
const METADATA: [IpAddr; 6] = [
    // AWS, GCP, Azure IMDS, Oracle, DigitalOcean, OpenStack and most others.
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // AWS ECS task metadata and credentials; EKS Pod Identity.
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    // Azure WireServer (platform agent, DNS).
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    // Alibaba Cloud.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // AWS IMDS over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// IPv4 special-purpose blocks that are not globally reachable (RFC 6890 and its updates),
/// with multicast and the deprecated 6to4 relay anycast block. Loopback is judged before these.
static NOT_GLOBAL_V4: LazyLock<Vec<Ipv4Net>> = LazyLock::new(|| {
    nets(&[
        "0.0.0.0/8",       // "this network"
        "10.0.0.0/8",      // private
        "100.64.0.0/10",   // shared address space (CGNAT)
        "169.254.0.0/16",  // link-local
        "172.16.0.0/12",   // private
        "192.0.0.0/24",    // IETF protocol assignments (but see GLOBAL_V4)
        "192.0.2.0/24",    // documentation (TEST-NET-1)
        "192.88.99.0/24",  // 6to4 relay anycast, deprecated (RFC 7526)
        "192.168.0.0/16",  // private
        "198.18.0.0/15",   // benchmarking
        "198.51.100.0/24", // documentation (TEST-NET-2)
        "203.0.113.0/24",  // documentation (TEST-NET-3)
        "224.0.0.0/4",     // multicast
        "240.0.0.0/4",     // reserved, and 255.255.255.255 broadcast
    ])
});

/// Blocks inside NOT_GLOBAL_V4 that the registry marks globally reachable.
static GLOBAL_V4: LazyLock<Vec<Ipv4Net>> = LazyLock::new(|| {
    nets(&[
        "192.0.0.9/32",  // Port Control Protocol anycast
        "192.0.0.10/32", // TURN anycast
    ])
});

/// IPv6 special-purpose blocks that are not globally reachable. Everything outside 2000::/3 is
/// refused as well (unallocated), except the embedding forms decoded first.
static NOT_GLOBAL_V6: LazyLock<Vec<Ipv6Net>> = LazyLock::new(|| {
    nets(&[
        "100::/64",       // discard-only
        "100:0:0:1::/64", // dummy prefix (RFC 9780)
        "2001::/23",      // IETF protocol assignments (but see GLOBAL_V6)
        "2001:db8::/32",  // documentation
        "3fff::/20",      // documentation (RFC 9637)
        "5f00::/16",      // segment routing SIDs
        "fc00::/7",       // unique local
        "fe80::/10",      // link-local
        "fec0::/10",      // site-local, deprecated
        "ff00::/8",       // multicast
    ])
});

/// Blocks inside NOT_GLOBAL_V6 that the registry marks globally reachable.
static GLOBAL_V6: LazyLock<Vec<Ipv6Net>> = LazyLock::new(|| {
    nets(&[
        "2001:1::1/128",   // Port Control Protocol anycast
        "2001:1::2/128",   // TURN anycast
        "2001:1::3/128",   // DNS-SD service registration protocol anycast
        "2001:3::/32",     // AMT
        "2001:4:112::/48", // AS112-v6
        "2001:20::/28",    // ORCHIDv2
    ])
});

static GLOBAL_UNICAST: LazyLock<Ipv6Net> = LazyLock::new(|| nets(&["2000::/3"])[0]);

fn nets<N: std::str::FromStr>(list: &[&str]) -> Vec<N> {
    // The lists are literals checked by the tests; none fails to parse.
    list.iter().filter_map(|n| n.parse().ok()).collect()
}

/// Where `ip` reaches.
pub(crate) fn reach(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => reach_v4(v4),
        IpAddr::V6(v6) => reach_v6(v6),
    }
}

fn reach_v4(ip: Ipv4Addr) -> Reach {
    if METADATA.contains(&IpAddr::V4(ip)) {
        Reach::Metadata
    } else if ip.is_loopback() || ip.is_unspecified() {
        Reach::Loopback
    } else if GLOBAL_V4.iter().any(|net| net.contains(&ip)) {
        Reach::Global
    } else if NOT_GLOBAL_V4.iter().any(|net| net.contains(&ip)) {
        Reach::NotGlobal
    } else {
        Reach::Global
    }
}

fn reach_v6(ip: Ipv6Addr) -> Reach {
    if METADATA.contains(&IpAddr::V6(ip)) {
        return Reach::Metadata;
    }
    if ip.is_loopback() || ip.is_unspecified() {
        return Reach::Loopback;
    }
    // `::ffff:a.b.c.d` is the IPv4 address itself to a dual-stack socket.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return reach_v4(v4);
    }
    if let Some(embedded) = embedded_ipv4(ip) {
        let worst = embedded
            .inner
            .iter()
            .map(|v4| reach_v4(*v4))
            .min()
            .unwrap_or(Reach::NotGlobal);
        return match worst {
            Reach::Metadata => Reach::Metadata,
            // A translator or tunnel does not lead back to this host's loopback: such an
            // address is nonsense, not a way to reach a local service.
            Reach::Loopback => Reach::NotGlobal,
            Reach::Global if !embedded.outer_global => Reach::NotGlobal,
            other => other,
        };
    }
    reach_v6_itself(ip)
}

/// The IPv6 address on its own, without decoding what it embeds.
fn reach_v6_itself(ip: Ipv6Addr) -> Reach {
    if GLOBAL_V6.iter().any(|net| net.contains(&ip)) {
        Reach::Global
    } else if NOT_GLOBAL_V6.iter().any(|net| net.contains(&ip)) || !GLOBAL_UNICAST.contains(&ip) {
        Reach::NotGlobal
    } else {
        Reach::Global
    }
}

/// The IPv4 addresses an IPv6 address leads to, and whether its own prefix is global.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Embedded {
    pub inner: Vec<Ipv4Addr>,
    /// False when the IPv6 prefix itself is not globally routable (local-use NAT64, an ISATAP
    /// address under a private prefix): then only a worse inner verdict can change the answer.
    pub outer_global: bool,
}

/// Decodes IPv4-mapped (`::ffff:a.b.c.d`, which `reach` treats as the address itself), IPv4-translated (`::ffff:0:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`, and the local-use
/// `64:ff9b:1::/48` in its RFC 6052 layout), 6to4 (`2002:AABB:CCDD::`), Teredo (`2001:0:SSSS:SSSS::`
/// with the client address inverted in the last 32 bits) and ISATAP (any /64 with the interface id
/// `0:5efe:a.b.c.d` or `200:5efe:a.b.c.d`).
pub(crate) fn embedded_ipv4(ip: Ipv6Addr) -> Option<Embedded> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    let low32 = v4(s[6], s[7]);
    let global = |inner: Vec<Ipv4Addr>| {
        Some(Embedded {
            inner,
            outer_global: true,
        })
    };
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => global(vec![low32]),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => global(vec![low32]),
        // A /48 prefix: the address sits in bits 48-63 and 72-87, around the zero "u" octet.
        [0x64, 0xff9b, 0x0001, a, b, c, _, _] => Some(Embedded {
            inner: vec![Ipv4Addr::new((a >> 8) as u8, a as u8, b as u8, (c >> 8) as u8)],
            outer_global: false,
        }),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses, judged before this.
        [0, 0, 0, 0, 0, 0, _, _] => global(vec![low32]),
        [0x2002, hi, lo, ..] => global(vec![v4(hi, lo)]),
        // Teredo: the server, then the client (its address inverted).
        [0x2001, 0, server_hi, server_lo, _, _, client_hi, client_lo] => {
            global(vec![v4(server_hi, server_lo), v4(!client_hi, !client_lo)])
        }
        [.., u, 0x5efe, _, _] if u & !0x0200 == 0 => Some(Embedded {
            inner: vec![low32],
            outer_global: reach_v6_itself(ip) == Reach::Global,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(ip: &str) -> Reach {
        reach(ip.parse().expect("an address"))
    }

    #[test]
    fn every_table_entry_parses() {
        assert_eq!(NOT_GLOBAL_V4.len(), 14);
        assert_eq!(GLOBAL_V4.len(), 2);
        assert_eq!(NOT_GLOBAL_V6.len(), 10);
        assert_eq!(GLOBAL_V6.len(), 6);
    }

    #[test]
    fn ipv4_special_purpose_blocks_are_not_global() {
        for ip in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.5",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert_eq!(of(ip), Reach::NotGlobal, "{ip}");
        }
    }

    #[test]
    fn ipv4_neighbours_of_the_blocks_and_the_registry_exceptions_are_global() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.0.9",
            "192.0.0.10",
            "192.0.1.255",
            "192.0.3.0",
            "192.31.196.1",
            "192.52.193.1",
            "192.88.98.255",
            "192.175.48.1",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "203.0.112.255",
            "223.255.255.255",
        ] {
            assert_eq!(of(ip), Reach::Global, "{ip}");
        }
    }

    #[test]
    fn loopback_and_unspecified_reach_this_host() {
        for ip in ["127.0.0.1", "127.255.255.254", "0.0.0.0", "::1", "::"] {
            assert_eq!(of(ip), Reach::Loopback, "{ip}");
        }
    }

    #[test]
    fn metadata_addresses_are_metadata_in_every_form() {
        for ip in [
            "169.254.169.254",
            "168.63.129.16",
            "100.100.100.200",
            "169.254.170.2",
            "fd00:ec2::254",
            "::ffff:168.63.129.16",
            "64:ff9b::a83f:8110",
            "2002:a83f:8110::",
        ] {
            assert_eq!(of(ip), Reach::Metadata, "{ip}");
        }
        assert_eq!(of("168.63.129.17"), Reach::Global);
    }

    #[test]
    fn ipv6_special_purpose_blocks_and_unallocated_space_are_not_global() {
        for ip in [
            "100::1",
            "100:0:0:1::1",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "2001:db8:ffff::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "feff::1",
            "ff02::1",
            "ff0e::1",
            "4000::1",
            "1::1",
        ] {
            assert_eq!(of(ip), Reach::NotGlobal, "{ip}");
        }
    }

    #[test]
    fn ipv6_global_unicast_and_the_registry_exceptions_are_global() {
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450::1",
            "2001:1::1",
            "2001:3::1",
            "2001:4:112::1",
            "2001:20::1",
            "2001:200::1",
            "2620:4f:8000::1",
            "3ffe::1",
        ] {
            assert_eq!(of(ip), Reach::Global, "{ip}");
        }
    }

    #[test]
    fn embedded_ipv4_addresses_are_judged_by_the_address_inside_and_never_reach_loopback() {
        let cases = [
            ("::ffff:127.0.0.1", Reach::Loopback),
            ("::ffff:10.0.0.1", Reach::NotGlobal),
            ("::ffff:8.8.8.8", Reach::Global),
            ("::ffff:0.0.0.0", Reach::Loopback),
            ("::ffff:0:127.0.0.1", Reach::NotGlobal),
            ("::ffff:0:8.8.8.8", Reach::Global),
            ("::127.0.0.1", Reach::NotGlobal),
            ("::a00:1", Reach::NotGlobal),
            ("::808:808", Reach::Global),
            ("64:ff9b::127.0.0.1", Reach::NotGlobal),
            ("64:ff9b::c0a8:101", Reach::NotGlobal),
            ("64:ff9b::808:808", Reach::Global),
            ("2002:7f00:1::", Reach::NotGlobal),
            ("2002:c0a8:101::1", Reach::NotGlobal),
            ("2002:808:808::", Reach::Global),
            ("2002:c000:204::", Reach::NotGlobal),
            // The local-use NAT64 prefix is not global whatever it carries.
            ("64:ff9b:1:808:8:800::", Reach::NotGlobal),
            ("64:ff9b:1:7f00:0:100::", Reach::NotGlobal),
            // Teredo: server 65.54.227.120, client 8.8.8.8 (inverted f7f7:f7f7) or 10.0.0.1 (f5ff:fffe).
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", Reach::Global),
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", Reach::NotGlobal),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Reach::NotGlobal),
            ("2001:0:4136:e378:8000:63bf:57c0:7eef", Reach::Metadata),
            ("2001:0:a00:1:8000:63bf:f7f7:f7f7", Reach::NotGlobal),
            // ISATAP under a global prefix, both interface id forms.
            ("2606:4700::5efe:808:808", Reach::Global),
            ("2606:4700::200:5efe:808:808", Reach::Global),
            ("2606:4700::5efe:a00:1", Reach::NotGlobal),
            ("2606:4700::200:5efe:7f00:1", Reach::NotGlobal),
            ("2606:4700::200:5efe:a9fe:a9fe", Reach::Metadata),
            // ISATAP under a prefix that is not global.
            ("fe80::5efe:808:808", Reach::NotGlobal),
            ("2001:db8::200:5efe:808:808", Reach::NotGlobal),
        ];
        for (ip, expected) in cases {
            assert_eq!(of(ip), expected, "{ip}");
        }
    }

    #[test]
    fn the_local_use_nat64_prefix_is_read_in_its_rfc_6052_layout() {
        let ip: Ipv6Addr = "64:ff9b:1:c0a8:1:100::".parse().expect("ipv6");
        assert_eq!(
            embedded_ipv4(ip).map(|e| e.inner),
            Some(vec![Ipv4Addr::new(192, 168, 1, 1)])
        );
    }
}

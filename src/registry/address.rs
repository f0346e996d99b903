//! Where the operator never connects: link-local addresses and the clouds' instance-metadata
//! services, where a node's cloud credentials live. No registry, token service or blob store is
//! there, so a registry (or a tenant's Model) that sends the operator there is attacking it.
//!
//! An address is judged by its canonical form: an IPv6 address that embeds an IPv4 one (mapped
//! `::ffff:a.b.c.d`, translated `::ffff:0:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`
//! and `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`) is judged as that IPv4 address too.
//! Names are judged twice: the clouds' documented metadata names before anything is sent, and
//! every address a name resolves to when the client connects ([`Resolver`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// IPv4 metadata endpoints outside 169.254.0.0/16: Alibaba Cloud (100.100.100.200), Oracle Cloud
/// Classic (192.0.0.192) and Azure's WireServer (168.63.129.16).
const METADATA_V4: [Ipv4Addr; 3] =
    [Ipv4Addr::new(100, 100, 100, 200), Ipv4Addr::new(192, 0, 0, 192), Ipv4Addr::new(168, 63, 129, 16)];

/// IPv6 metadata endpoints outside fe80::/10: GCP (fd20:ce::254), Scaleway (fd00:42::42) and
/// Akamai/Linode (fd00:a9fe:a9fe::1). AWS's whole fd00:ec2::/32 (IMDS ::254, EKS Pod Identity
/// ::23, DNS ::253, time ::123) is refused in [`forbidden_v6`].
const METADATA_V6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0x42, 0, 0, 0, 0, 0, 0x42),
    Ipv6Addr::new(0xfd00, 0xa9fe, 0xa9fe, 0, 0, 0, 0, 1),
];

/// The clouds' documented metadata host names (compared without case and trailing dot).
const METADATA_NAMES: [&str; 9] = [
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "metadata.tencentyun.com",
    "metadata.packet.net",
    "metadata.platformequinix.com",
    "api.metadata.cloud.ibm.com",
    "metadata.azure.internal",
];

/// The IPv4 addresses `ip` stands for: itself, and for IPv6 every IPv4 address it embeds.
pub fn embedded_v4(ip: IpAddr) -> Vec<Ipv4Addr> {
    let v6 = match ip {
        IpAddr::V4(v4) => return vec![v4],
        IpAddr::V6(v6) => v6,
    };
    let s = v6.segments();
    let low = Ipv4Addr::from(u128::from(v6) as u32);
    let mut out = Vec::new();
    match s {
        // ::ffff:a.b.c.d (mapped), ::ffff:0:a.b.c.d (translated), ::a.b.c.d (compatible, not ::1 or ::).
        [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0xffff, 0, ..] => out.push(low),
        [0, 0, 0, 0, 0, 0, ..] if u32::from(low) > 1 => out.push(low),
        // NAT64 well-known prefix (RFC 6052).
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => out.push(low),
        // NAT64 local-use prefix (RFC 8215): the operator picks /48../96; every RFC 6052 position.
        [0x64, 0xff9b, 1, ..] => {
            let b = v6.octets();
            let at = |o: [u8; 4]| Ipv4Addr::from(o);
            out.extend([
                at([b[6], b[7], b[9], b[10]]),
                at([b[7], b[9], b[10], b[11]]),
                at([b[9], b[10], b[11], b[12]]),
                low,
            ]);
        }
        // 6to4: 2002:AABB:CCDD::/48.
        [0x2002, hi, lo, ..] => out.push(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        // Teredo: the client's address, inverted, in the last 32 bits.
        [0x2001, 0, ..] => out.push(Ipv4Addr::from(!u32::from(low))),
        _ => {}
    }
    out
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    ip.is_link_local() || METADATA_V4.contains(&ip)
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    (s[0] & 0xffc0) == 0xfe80 || (s[0], s[1]) == (0xfd00, 0x0ec2) || METADATA_V6.contains(&ip)
}

/// Whether `ip`, in any of its forms, is link-local or a cloud metadata address.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if forbidden_v6(v6)) || embedded_v4(ip).into_iter().any(forbidden_v4)
}

/// Whether host `name` (a DNS name, not an address) is a cloud's metadata name.
pub fn is_forbidden_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    METADATA_NAMES.contains(&name.as_str())
        || name.ends_with(".metadata.google.internal")
        || (name.starts_with("instance-data.") && name.ends_with(".internal"))
}

/// Whether `url`'s host is a forbidden address literal (any IPv4 or IPv6 spelling the URL parser
/// accepts) or a metadata name.
pub fn is_forbidden_url(url: &reqwest::Url) -> bool {
    // The URL parser has already made any IPv4 spelling (hex, octal, one number) dotted decimal.
    let Some(host) = url.host_str() else { return false };
    match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) => is_forbidden_ip(ip),
        Err(_) => is_forbidden_name(host),
    }
}

/// A connection the operator refused to make: the error that reaches status and the CLI.
#[derive(Debug, thiserror::Error)]
#[error("{what} is a link-local or cloud metadata address; refused")]
pub struct Forbidden {
    pub what: String,
}

/// How names become addresses (the system's resolver; tests inject their own).
pub trait Lookup: Send + Sync {
    fn lookup(&self, name: String) -> futures::future::BoxFuture<'static, std::io::Result<Vec<IpAddr>>>;
}

/// getaddrinfo, on tokio's blocking pool (what reqwest does by default).
pub struct System;

impl Lookup for System {
    fn lookup(&self, name: String) -> futures::future::BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((name, 0)).await?.map(|a| a.ip()).collect()) })
    }
}

/// The client's resolver: a name that is a metadata name, or that resolves to any forbidden
/// address, is refused whole, so the check applies to the address the client actually connects
/// to (not to an earlier lookup a DNS answer could contradict).
#[derive(Clone)]
pub struct Resolver(pub Arc<dyn Lookup>);

/// The addresses of `name`, or why none may be used.
pub fn judge(name: &str, addresses: Vec<IpAddr>) -> Result<Vec<IpAddr>, Forbidden> {
    if is_forbidden_name(name) {
        return Err(Forbidden { what: format!("host {name}") });
    }
    match addresses.iter().find(|ip| is_forbidden_ip(**ip)) {
        Some(ip) => Err(Forbidden { what: format!("host {name} (resolved to {ip})") }),
        None => Ok(addresses),
    }
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_owned();
        let lookup = self.0.lookup(name.clone());
        Box::pin(async move {
            let addresses = judge(&name, lookup.await?)?;
            let addrs: reqwest::dns::Addrs = Box::new(addresses.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
#[path = "address_tests.rs"]
mod tests;

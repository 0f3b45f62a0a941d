//! Where a plugin's requests may go once names are resolved. `allowed_hosts` names what a
//! plugin may ask for; a name may still resolve to anything (DNS is not the operator's to
//! trust), so the resolver of `http.send` drops loopback, private, link-local and other
//! non-public addresses, unless the manifest lists that very address in `allowed_hosts`
//! (an IP literal there, which reqwest connects to without resolving) or sets
//! `allow_private = true`. A name that resolves to nothing else is refused with a message
//! saying so.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What a target's resolved addresses may be.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Reach {
    /// Addresses listed as IP literals in `allowed_hosts`, sorted.
    listed: Vec<IpAddr>,
    /// `allow_private = true`: any address.
    allow_private: bool,
}

impl Reach {
    /// From a target's `allowed_hosts` (`host:port`, IPv6 in brackets) and `allow_private`.
    pub fn new(allowed_hosts: &[String], allow_private: bool) -> Self {
        let mut listed: Vec<IpAddr> = allowed_hosts
            .iter()
            .filter_map(|hp| hp.rsplit_once(':').map(|(h, _)| h))
            .filter_map(|h| h.trim_start_matches('[').trim_end_matches(']').parse().ok())
            .collect();
        listed.sort();
        listed.dedup();
        Self { listed, allow_private }
    }

    /// Whether a resolved address may be connected to.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip) || self.listed.contains(&ip)
    }
}

/// Not loopback, private, link-local, shared (CGNAT), unspecified, multicast, broadcast or
/// documentation space; IPv4-mapped IPv6 addresses are judged as IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0)
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local
        || (first == 0x2001 && ip.segments()[1] == 0xdb8)) // documentation
}

/// The resolver of a plugin's HTTP client: the system's, filtered by [`Reach`].
#[derive(Debug)]
pub struct GuardedResolver {
    reach: Reach,
}

impl GuardedResolver {
    pub fn new(reach: Reach) -> Arc<Self> {
        Arc::new(Self { reach })
    }
}

/// A name that resolved only to addresses the target may not reach.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{name}` resolves only to non-public addresses ({addrs}); list the address in the target's \
     `allowed_hosts` or set `allow_private = true`"
)]
pub struct NonPublic {
    name: String,
    addrs: String,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let reach = self.reach.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(found) => found.collect(),
                Err(e) => return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            };
            let (kept, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| reach.permits(a.ip()));
            if kept.is_empty() && !refused.is_empty() {
                let addrs = refused
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(NonPublic { name: host, addrs }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_unless_listed_or_allowed() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip(public)), "{public}");
        }
        let reach = Reach::new(
            &["127.0.0.1:9000".into(), "hooks.internal:443".into(), "[::1]:8".into()],
            false,
        );
        assert!(reach.permits(ip("127.0.0.1")) && reach.permits(ip("::1")));
        assert!(!reach.permits(ip("10.0.0.1")) && reach.permits(ip("1.1.1.1")));
        assert!(Reach::new(&[], true).permits(ip("10.0.0.1")));
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused() {
        let refused = GuardedResolver::new(Reach::default())
            .resolve("localhost".parse::<Name>().unwrap())
            .await;
        let err = refused.err().expect("localhost is loopback").to_string();
        assert!(err.contains("allow_private"), "{err}");
        let allowed = GuardedResolver::new(Reach::new(&[], true))
            .resolve("localhost".parse::<Name>().unwrap())
            .await
            .map(|a| a.count());
        assert!(matches!(allowed, Ok(n) if n > 0));
    }
}

//! Client addresses: the key every per-address rule counts by, trusted
//! proxies and their `Forwarded` / `X-Forwarded-For` headers, and the Host
//! check against DNS rebinding.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// The key per-address rules count a client by: an IPv4 address (IPv4-mapped
/// IPv6 included: a dual-stack listener shows IPv4 clients that way), or
/// the first `v6_prefix_len` bits of an IPv6 address, since one subscriber
/// commonly holds a whole /64.
pub fn key(ip: IpAddr, v6_prefix_len: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(
            v6.to_bits() & prefix_mask(v6_prefix_len),
        )),
    }
}

fn prefix_mask(len: u8) -> u128 {
    match len.min(128) {
        0 => 0,
        n => u128::MAX << (128 - u32::from(n)),
    }
}

/// An address or a network (`10.0.0.0/8`, `::1`, `fd00::/8`), as given to
/// `--trusted-proxy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = match self.len {
                    0 => 0,
                    n => u32::MAX << (32 - u32::from(n)),
                };
                net.to_bits() & mask == ip.to_bits() & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = prefix_mask(self.len);
                net.to_bits() & mask == ip.to_bits() & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8): {s:?}");
        let (a, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let addr = a.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        Ok(Cidr { addr, len })
    }
}

/// One node of a forwarding chain: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1`, `[2001:db8::1]:4711`, quoted or not. `None` for
/// `unknown`, obfuscated identifiers (RFC 7239 §6) and garbage.
fn node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    // `[v6]` without a port.
    s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The `for=` nodes of `Forwarded` header values (RFC 7239 §4), in order.
fn forwarded_for<'a>(values: &'a [&'a [u8]]) -> impl Iterator<Item = Option<IpAddr>> + 'a {
    values
        .iter()
        .flat_map(|v| std::str::from_utf8(v).unwrap_or("").split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| node(v))
            })
        })
}

/// The client behind a trusted proxy: walking the chain from the right
/// (the hop nearest us), the first address that is not itself a trusted
/// proxy. `Forwarded` is read if present, else `X-Forwarded-For`. `None`
/// when the request carries neither (the peer itself is the client).
///
/// An entry that is not an address (`unknown`, an obfuscated name) ends the
/// walk: the last trusted hop before it is taken as the client, so that
/// such clients are limited together rather than not at all.
pub fn forwarded_client(
    peer: IpAddr,
    forwarded: &[&[u8]],
    x_forwarded_for: &[&[u8]],
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let chain: Vec<Option<IpAddr>> = if !forwarded.is_empty() {
        forwarded_for(forwarded).collect()
    } else if !x_forwarded_for.is_empty() {
        x_forwarded_for
            .iter()
            .flat_map(|v| std::str::from_utf8(v).unwrap_or("").split(','))
            .filter(|s| !s.trim().is_empty())
            .map(node)
            .collect()
    } else {
        return None;
    };
    let mut last = peer;
    for hop in chain.into_iter().rev() {
        let Some(ip) = hop else { break };
        let ip = ip.to_canonical();
        if !trusted.iter().any(|c| c.contains(ip)) {
            return Some(ip);
        }
        last = ip;
    }
    Some(last)
}

/// The name part of a `Host` value: without its port, and for an IPv6
/// literal with its brackets.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The name of a refused `Host`, as told to the operator (log) and the
/// client (the 421's body): without its port, and only if it looks like a
/// host name, since it is the client's text.
pub fn shown_name(host: &str) -> &str {
    let name = host_name(host);
    let plain = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if plain { name } else { "NAME" }
}

/// The Host check against DNS rebinding: a page from `evil.example` whose
/// name the attacker re-points at this server still sends
/// `Host: evil.example`, so accepting only names we know keeps such pages
/// from reading our pages or talking to `/ws` as same-origin.
///
/// Accepted: IP literals (v4, `[v6]`; a rebinding needs a name), `localhost`
/// and `*.localhost` (RFC 6761 §6.3: always loopback), the names in
/// `known` (the machine's own, already lower-case), and `allowed`
/// (`--allowed-host`; `*` accepts everything).
pub fn host_allowed(host: &str, known: &[String], allowed: &[String]) -> bool {
    let name = host_name(host);
    let bare = name.trim_end_matches('.');
    if name.parse::<std::net::Ipv4Addr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<Ipv6Addr>().is_ok())
    {
        return true;
    }
    let lower = bare.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    known.contains(&lower)
        || allowed.iter().any(|a| {
            let a = a.trim();
            a == "*"
                || a.trim_end_matches('.').eq_ignore_ascii_case(bare)
                || a.eq_ignore_ascii_case(host.trim())
        })
}

/// The machine's own names, as a browser on the LAN would use them, from
/// its host name (`gethostname`, read once at start by the binary): the
/// name and, for its first label, `NAME.local` (mDNS, as in
/// `http://raspberrypi.local:8080/`).
pub fn own_names(hostname: &str) -> Vec<String> {
    let name = hostname.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Vec::new();
    }
    let first = name.split('.').next().unwrap_or(&name).to_string();
    let mut names = vec![name, format!("{first}.local")];
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_by_prefix_and_mapped_ipv4_as_ipv4() {
        assert_eq!(key(ip("2001:db8::1"), 64), key(ip("2001:db8::2"), 64));
        assert_eq!(key(ip("2001:db8::1"), 64), ip("2001:db8::"));
        assert_ne!(key(ip("2001:db8::1"), 64), key(ip("2001:db8:0:1::1"), 64));
        assert_eq!(key(ip("2001:db8:0:1::1"), 48), key(ip("2001:db8::1"), 48));
        assert_ne!(key(ip("2001:db8::1"), 128), key(ip("2001:db8::2"), 128));
        assert_eq!(key(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(key(ip("::ffff:192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(key(ip("192.0.2.7"), 64), ip("192.0.2.7"));
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("proxy".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_takes_the_right_most_untrusted_hop() {
        let trusted = ["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let peer = ip("127.0.0.1");
        let f = |fwd: &[&str], xff: &[&str]| {
            let fwd: Vec<&[u8]> = fwd.iter().map(|s| s.as_bytes()).collect();
            let xff: Vec<&[u8]> = xff.iter().map(|s| s.as_bytes()).collect();
            forwarded_client(peer, &fwd, &xff, &trusted)
        };
        assert_eq!(f(&[], &[]), None);
        // A client's own claim on the left cannot hide it.
        assert_eq!(f(&[], &["6.6.6.6, 192.0.2.9"]), Some(ip("192.0.2.9")));
        assert_eq!(f(&[], &["192.0.2.9, 10.1.1.1"]), Some(ip("192.0.2.9")));
        assert_eq!(
            f(&[], &["6.6.6.6", "192.0.2.9:1234"]),
            Some(ip("192.0.2.9"))
        );
        assert_eq!(f(&[], &["[2001:db8::1]:80"]), Some(ip("2001:db8::1")));
        assert_eq!(
            f(
                &["for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https"],
                &["7.7.7.7"]
            ),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            f(&["proto=http;For=192.0.2.60"], &[]),
            Some(ip("192.0.2.60"))
        );
        // Nothing to go by past a trusted hop: the hop itself.
        assert_eq!(f(&["for=unknown, for=10.0.0.5"], &[]), Some(ip("10.0.0.5")));
        assert_eq!(f(&[], &["garbage"]), Some(peer));
    }

    #[test]
    fn own_names_add_mdns() {
        assert_eq!(
            own_names("raspberrypi"),
            ["raspberrypi", "raspberrypi.local"]
        );
        assert_eq!(own_names("Box.lan."), ["box.lan", "box.local"]);
        assert!(own_names("").is_empty());
    }

    #[test]
    fn hosts() {
        let known = vec!["raspberrypi".to_string(), "raspberrypi.local".to_string()];
        let none: Vec<String> = Vec::new();
        for ok in [
            "127.0.0.1:8080",
            "192.168.1.9",
            "[::1]:8080",
            "[2001:db8::1]",
            "localhost",
            "LOCALHOST:8080",
            "app.localhost:8080",
            "localhost.",
            "raspberrypi.local:8080",
            "RaspberryPi",
        ] {
            assert!(host_allowed(ok, &known, &none), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "[::1",
            "",
        ] {
            assert!(!host_allowed(bad, &known, &none), "{bad}");
        }
        let allowed = vec!["chat.example.org".to_string()];
        assert!(host_allowed("chat.example.org:443", &known, &allowed));
        assert!(host_allowed("Chat.Example.org", &known, &allowed));
        assert!(!host_allowed("evil.example", &known, &allowed));
        assert!(host_allowed("evil.example", &known, &["*".to_string()]));
        assert_eq!(shown_name("Evil.example:8080"), "Evil.example");
        assert_eq!(shown_name("<script>"), "NAME");
    }
}

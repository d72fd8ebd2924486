//! Network address rules of profiles (`allow.network.connect` and `listen`): an address or
//! a CIDR block, with an optional port or port range.
//!
//! ```text
//! 127.0.0.0/8            any port in 127.0.0.0/8
//! 10.0.0.0/8:443         port 443 only
//! 10.1.2.3:8000-8100     one address, a port range
//! ::1  fe80::/10         IPv6 without a port: no brackets needed
//! [::1]:*  [fd00::/8]:53 IPv6 with a port: in brackets
//! *:8000  *              any address
//! ```
//!
//! IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are the IPv4 addresses they carry, on
//! both sides: a peer `[::ffff:10.0.0.1]:443` matches the rule `10.0.0.0/8:443`, and the
//! rule `::ffff:10.0.0.0/104` is the rule `10.0.0.0/8`.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// An IPv4 or IPv6 network: an address whose host bits are zero, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDRESS/PREFIX`, or a bare address (a /32 or /128). Host bits must be zero.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let ip: IpAddr = address.parse().map_err(|_| match prefix {
            Some(_) => {
                format!("invalid CIDR \"{text}\": \"{address}\" is not an IPv4 or IPv6 address")
            }
            None => format!("invalid address \"{text}\": not an IPv4 or IPv6 address"),
        })?;
        let max = max_prefix(ip);
        let prefix = match prefix {
            None => max,
            Some(digits) => {
                let value: u8 = digits
                    .parse()
                    .ok()
                    .filter(|_| !digits.starts_with('+'))
                    .ok_or_else(|| {
                        format!(
                            "invalid CIDR \"{text}\": prefix length \"{digits}\" is not a number"
                        )
                    })?;
                if value > max {
                    return Err(format!(
                        "invalid CIDR \"{text}\": prefix length {value} is longer than {max}"
                    ));
                }
                value
            }
        };
        let network = mask(ip, prefix);
        if network != ip {
            return Err(format!(
                "invalid CIDR \"{text}\": host bits are set (did you mean \"{network}/{prefix}\"?)"
            ));
        }
        Ok(Cidr::new_unchecked(network, prefix))
    }

    /// A network from an address and a prefix length; host bits are cleared, and an
    /// IPv4-mapped IPv6 network (prefix 96 or more) becomes the IPv4 network it carries.
    pub fn new(address: IpAddr, prefix: u8) -> Cidr {
        let prefix = prefix.min(max_prefix(address));
        Cidr::new_unchecked(mask(address, prefix), prefix)
    }

    fn new_unchecked(network: IpAddr, prefix: u8) -> Cidr {
        if let IpAddr::V6(v6) = network {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                return Cidr {
                    network: IpAddr::V4(v4),
                    prefix: prefix - 96,
                };
            }
        }
        Cidr { network, prefix }
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.network
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

/// Which ports a rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ports {
    Any,
    /// Inclusive range; a single port is `Range(p, p)`.
    Range(u16, u16),
}

impl Ports {
    /// Parses `*`, `PORT` or `FIRST-LAST` (ports 1 to 65535).
    pub fn parse(text: &str) -> Result<Ports, String> {
        if text == "*" {
            return Ok(Ports::Any);
        }
        let port = |digits: &str| -> Result<u16, String> {
            match digits.parse::<u16>() {
                Ok(port) if port > 0 && !digits.starts_with('+') => Ok(port),
                _ => Err(format!(
                    "invalid port \"{digits}\": expected a number from 1 to 65535, a range \
                     FIRST-LAST, or *"
                )),
            }
        };
        match text.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (port(first)?, port(last)?);
                if first > last {
                    return Err(format!(
                        "invalid port range \"{text}\": {first} is greater than {last}"
                    ));
                }
                Ok(Ports::Range(first, last))
            }
            None => port(text).map(|p| Ports::Range(p, p)),
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        match *self {
            Ports::Any => true,
            Ports::Range(first, last) => first <= port && port <= last,
        }
    }
}

/// One address rule: a network (or any address) and ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrRule {
    text: String,
    /// `None`: any address.
    network: Option<Cidr>,
    ports: Ports,
}

impl AddrRule {
    /// Parses a rule; see the module documentation for the forms.
    pub fn parse(text: &str) -> Result<AddrRule, String> {
        let (address, ports) = split_port(text)?;
        let network = match address {
            "*" => None,
            "" => {
                return Err(format!(
                    "invalid address rule \"{text}\": the address is empty"
                ))
            }
            address => Some(Cidr::parse(address)?),
        };
        let ports = match ports {
            Some(ports) => Ports::parse(ports)
                .map_err(|err| format!("invalid address rule \"{text}\": {err}"))?,
            None => Ports::Any,
        };
        Ok(AddrRule {
            text: text.to_owned(),
            network,
            ports,
        })
    }

    /// The rule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn network(&self) -> Option<Cidr> {
        self.network
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Whether the socket address is allowed by this rule.
    pub fn matches(&self, addr: SocketAddr) -> bool {
        self.network.is_none_or(|net| net.contains(addr.ip())) && self.ports.contains(addr.port())
    }
}

/// Splits `ADDRESS[:PORTS]`: IPv6 with a port is bracketed; a bare address with more than
/// one `:` is IPv6 without a port.
fn split_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!("invalid address rule \"{text}\": missing \"]\""));
        };
        return match after {
            "" => Ok((inside, None)),
            _ => match after.strip_prefix(':') {
                Some(ports) => Ok((inside, Some(ports))),
                None => Err(format!(
                    "invalid address rule \"{text}\": expected \":PORT\" after \"]\""
                )),
            },
        };
    }
    match text.matches(':').count() {
        0 => Ok((text, None)),
        1 => {
            let (address, ports) = text.split_once(':').unwrap_or((text, ""));
            Ok((address, Some(ports)))
        }
        // IPv6 without brackets: no port can be given.
        _ => Ok((text, None)),
    }
}

/// Whether an address is loopback (127.0.0.0/8, ::1, or IPv4-mapped loopback).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn rule(text: &str) -> AddrRule {
        AddrRule::parse(text).unwrap()
    }

    #[test]
    fn cidr_contains_v4_and_v6() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.255.1.2".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let net = Cidr::parse("fe80::/10").unwrap();
        assert!(net.contains("fe80::1".parse().unwrap()));
        assert!(net.contains("febf::1".parse().unwrap()));
        assert!(!net.contains("fec0::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::/0")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        assert_eq!(Cidr::parse("192.0.2.7").unwrap().prefix(), 32);
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_rules() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(rule("10.0.0.0/8:443").matches(sock("[::ffff:10.1.2.3]:443")));
        assert!(!rule("10.0.0.0/8:443").matches(sock("[::ffff:10.1.2.3]:80")));
        assert!(rule("127.0.0.0/8").matches(sock("[::ffff:127.0.0.1]:9")));
        // A mapped rule is the IPv4 rule.
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped, Cidr::parse("10.0.0.0/8").unwrap());
        assert!(mapped.contains("10.9.9.9".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn rules_with_ports() {
        assert!(rule("127.0.0.0/8").matches(sock("127.0.0.1:1")));
        assert!(rule("10.0.0.0/8:443").matches(sock("10.0.0.1:443")));
        assert!(!rule("10.0.0.0/8:443").matches(sock("10.0.0.1:444")));
        assert!(rule("10.1.2.3:8000-8100").matches(sock("10.1.2.3:8100")));
        assert!(!rule("10.1.2.3:8000-8100").matches(sock("10.1.2.3:8101")));
        assert!(rule("*:8000").matches(sock("[2001:db8::1]:8000")));
        assert!(rule("*:8000").matches(sock("0.0.0.0:8000")));
        assert!(!rule("*:8000").matches(sock("0.0.0.0:8001")));
        assert!(rule("*").matches(sock("1.2.3.4:5")));
        assert_eq!(rule("*").ports(), Ports::Any);
    }

    #[test]
    fn ipv6_brackets() {
        assert!(rule("[::1]:*").matches(sock("[::1]:65535")));
        assert!(!rule("[::1]:*").matches(sock("127.0.0.1:80")));
        assert!(rule("[::1]").matches(sock("[::1]:80")));
        assert!(rule("::1").matches(sock("[::1]:80")));
        assert!(rule("[fd00::/8]:53").matches(sock("[fd12::1]:53")));
        assert!(!rule("[fd00::/8]:53").matches(sock("[fd12::1]:54")));
        assert!(rule("fe80::/10").matches(sock("[fe80::2]:1")));
        assert_eq!(rule("[::1]:*").as_str(), "[::1]:*");
    }

    #[test]
    fn bad_rules_name_the_problem() {
        let err = AddrRule::parse("10.0.0/33").unwrap_err();
        assert_eq!(
            err,
            "invalid CIDR \"10.0.0/33\": \"10.0.0\" is not an IPv4 or IPv6 address"
        );
        assert!(AddrRule::parse("10.0.0.0/33")
            .unwrap_err()
            .contains("prefix length 33 is longer than 32"));
        assert!(AddrRule::parse("10.0.0.1/8")
            .unwrap_err()
            .contains("did you mean \"10.0.0.0/8\"?"));
        assert!(AddrRule::parse("10.0.0.0/x")
            .unwrap_err()
            .contains("not a number"));
        assert!(AddrRule::parse("10.0.0.1:0")
            .unwrap_err()
            .contains("invalid port \"0\""));
        assert!(AddrRule::parse("10.0.0.1:70000").is_err());
        assert!(AddrRule::parse("10.0.0.1:").is_err());
        assert!(AddrRule::parse("10.0.0.1:9-8")
            .unwrap_err()
            .contains("9 is greater than 8"));
        assert!(AddrRule::parse("[::1")
            .unwrap_err()
            .contains("missing \"]\""));
        assert!(AddrRule::parse("[::1]x").is_err());
        assert!(AddrRule::parse("").is_err());
        assert!(AddrRule::parse(":80").is_err());
        assert!(AddrRule::parse("example.com:443")
            .unwrap_err()
            .contains("not an IPv4 or IPv6 address"));
    }
}

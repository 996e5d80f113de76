//! IPv4 and IPv6 address ranges (CIDR blocks) for allow and deny lists.
use std::net::IpAddr;
use std::str::FromStr;

/// An address range such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| format!("'{s}' is not an IP address or CIDR block (e.g. 10.0.0.0/8, 2001:db8::/32)"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| format!("'{s}' has a prefix length outside 0..={max}"))?,
        };
        let cidr = Cidr { network, prefix };
        if cidr.mask(network) != network {
            return Err(format!("'{s}' has host bits set; write the network address (e.g. {}/{prefix})", cidr.mask(network)));
        }
        Ok(cidr)
    }
}

impl Cidr {
    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                IpAddr::V4(bits.into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                IpAddr::V6(bits.into())
            }
        }
    }

    /// Whether every address of the range is a loopback address.
    pub fn is_loopback(&self) -> bool {
        match self.network {
            IpAddr::V4(v4) => v4.is_loopback() && self.prefix >= 8,
            IpAddr::V6(v6) => v6.is_loopback() && self.prefix == 128,
        }
    }

    /// Whether `ip` is in this range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.network.is_ipv4() && self.mask(ip) == self.network
    }
}

/// `::ffff:1.2.3.4` → `1.2.3.4`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn matches_v4_and_v6() {
        let c: Cidr = "10.1.0.0/16".parse().expect("cidr");
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.9.9")));
        let all: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        let v6: Cidr = "2001:db8::/32".parse().expect("cidr");
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        let one: Cidr = "127.0.0.1".parse().expect("cidr");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
    }

    #[test]
    fn refuses_malformed() {
        for bad in ["10.0.0.0/33", "10.0.0.1/8", "banana", "10.0.0.0/", "::/129", "1.2.3/24", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}

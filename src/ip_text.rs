//! An IP address as text without a heap allocation or the formatting machinery: the
//! audit record and the offenders' table write one for most requests, and `Display`
//! costs about a thousand instructions for an IPv4 address where this takes a tenth.

use std::net::IpAddr;

/// The text of one address (the longest IPv6 text is 45 bytes).
pub struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    pub fn of(ip: IpAddr) -> IpText {
        let mut buf = [0u8; 48];
        let len = match ip {
            IpAddr::V4(v4) => {
                let mut len = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[len] = b'.';
                        len += 1;
                    }
                    if octet >= 100 {
                        buf[len] = b'0' + octet / 100;
                        len += 1;
                    }
                    if octet >= 10 {
                        buf[len] = b'0' + octet / 10 % 10;
                        len += 1;
                    }
                    buf[len] = b'0' + octet % 10;
                    len += 1;
                }
                len
            }
            IpAddr::V6(_) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                let _ = write!(cursor, "{ip}");
                cursor.position() as usize
            }
        };
        IpText { buf, len }
    }

    pub fn as_str(&self) -> &str {
        // ASCII digits, dots, colons and hex letters only.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_display_for_every_octet_and_for_ipv6() {
        for octet in 0..=255u8 {
            for ip in [IpAddr::from([octet, 0, 255, octet]), IpAddr::from([10, octet, 9, 100])] {
                assert_eq!(IpText::of(ip).as_str(), ip.to_string());
            }
        }
        for text in [
            "::1",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(IpText::of(ip).as_str(), ip.to_string());
        }
    }
}

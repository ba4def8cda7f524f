//! The FTP parser's promises, checked on one line (the property tests and the parser fuzz
//! target run the same checks).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use ftpct_core::parser::{
    format_eprt_args, format_port_args, format_port_number, parse_227, parse_229, parse_command,
    parse_reply_start, Command, Found,
};

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Every invariant the parser promises, checked on one line: no panic; spans in bounds and
/// non-empty; the span's text, put back into a canonical line, parses to the same value; the
/// formatters' output for a parsed address parses back to it.
pub fn check_line(line: &[u8]) {
    match parse_command(line) {
        Ok(Command::Port(Found { addr, span })) => {
            let text = line.get(span).expect("PORT span in bounds");
            assert!(!text.is_empty());
            let again = cat(&[b"PORT ", text]);
            assert_eq!(
                parse_command(&again),
                Ok(Command::Port(Found {
                    addr,
                    span: 5..again.len()
                }))
            );
            check_port(addr);
        }
        Ok(Command::Eprt {
            found: Found { addr, span },
            delim,
        }) => {
            let text = line.get(span).expect("EPRT span in bounds");
            assert_eq!(text.first(), Some(&delim));
            assert_eq!(text.last(), Some(&delim));
            let again = cat(&[b"EPRT ", text]);
            assert_eq!(
                parse_command(&again),
                Ok(Command::Eprt {
                    found: Found {
                        addr,
                        span: 5..again.len()
                    },
                    delim
                })
            );
            check_eprt(addr, delim);
        }
        Ok(_) | Err(_) => {}
    }
    if let Ok(Found { addr, span }) = parse_227(line) {
        let text = line.get(span).expect("227 span in bounds");
        assert_eq!(
            parse_227(text),
            Ok(Found {
                addr,
                span: 0..text.len()
            })
        );
        let mut f = Vec::new();
        format_port_args(addr, &mut f);
        assert_eq!(parse_227(&f).map(|f| f.addr), Ok(addr));
        check_port(addr);
    }
    if let Ok(Found { addr, span }) = parse_229(line) {
        let text = line.get(span).expect("229 span in bounds");
        assert!(!text.is_empty() && text.iter().all(u8::is_ascii_digit));
        let again = cat(&[b"229 (|||", text, b"|)"]);
        assert_eq!(
            parse_229(&again),
            Ok(Found {
                addr,
                span: 8..8 + text.len()
            })
        );
        let mut n = Vec::new();
        format_port_number(addr, &mut n);
        let again = cat(&[b"229 (|||", &n, b"|)"]);
        assert_eq!(parse_229(&again).map(|f| f.addr), Ok(addr));
        check_229(addr);
    }
    if let Some(rs) = parse_reply_start(line) {
        assert!(rs.code <= 999);
        assert_eq!(rs.multiline, line.get(3) == Some(&b'-'));
    }
}

/// Formatter round trips for addresses taken from the first 19 bytes of `line` (16 address
/// bytes, a port, a delimiter), when it has them.
pub fn check_formatters_on_bytes(line: &[u8]) {
    if let Some((head, _)) = line.split_first_chunk::<19>() {
        let mut v6 = [0u8; 16];
        v6.copy_from_slice(&head[..16]);
        let port = u16::from_be_bytes([head[16], head[17]]).max(1);
        let delim = head[18];
        let v4 = Ipv4Addr::new(v6[0], v6[1], v6[2], v6[3]);
        check_port(SocketAddrV4::new(v4, port));
        check_eprt(SocketAddr::new(IpAddr::V4(v4), port), delim);
        check_eprt(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(v6)), port), delim);
        check_229(port);
    }
}

/// `addr` formatted into a PORT command and a 227 reply parses back, with the exact span.
pub fn check_port(addr: SocketAddrV4) {
    let mut line = b"PORT ".to_vec();
    format_port_args(addr, &mut line);
    let want = Command::Port(Found {
        addr,
        span: 5..line.len(),
    });
    assert_eq!(parse_command(&line), Ok(want));
    // The same text as a 227 reply.
    let mut reply = b"227 Entering Passive Mode (".to_vec();
    format_port_args(addr, &mut reply);
    let end = reply.len();
    reply.extend_from_slice(b").");
    assert_eq!(
        parse_227(&reply),
        Ok(Found {
            addr,
            span: 27..end
        })
    );
}

/// `addr` formatted into an EPRT command with `delim` parses back, with the exact span.
pub fn check_eprt(addr: SocketAddr, delim: u8) {
    let mut line = b"EPRT ".to_vec();
    format_eprt_args(addr, delim, &mut line);
    match parse_command(&line) {
        Ok(Command::Eprt { found, .. }) => {
            assert_eq!(found.addr, addr);
            assert_eq!(found.span, 5..line.len());
        }
        other => panic!("{:?} -> {other:?}", String::from_utf8_lossy(&line)),
    }
}

/// `port` formatted into a 229 reply parses back, with the exact span.
pub fn check_229(port: u16) {
    let mut line = b"229 Entering Extended Passive Mode (|||".to_vec();
    let start = line.len();
    format_port_number(port, &mut line);
    let end = line.len();
    line.extend_from_slice(b"|)");
    assert_eq!(
        parse_229(&line),
        Ok(Found {
            addr: port,
            span: start..end
        })
    );
}

//! Property tests for `ftpct::parser`: format → parse round trips, differential checks against
//! simple reference models, and "never panics, spans always in bounds and re-parse" on
//! arbitrary and on structured-random input.

use ftpct::parser::{
    eprt_delim_unambiguous, format_eprt_args, format_port_args, format_port_number, parse_227,
    parse_229, parse_command, Command, Found, ParseError,
};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn port_args(a: SocketAddrV4) -> Vec<u8> {
    let mut v = Vec::new();
    format_port_args(a, &mut v);
    v
}

fn eprt_args(a: SocketAddr, d: u8) -> Vec<u8> {
    let mut v = Vec::new();
    format_eprt_args(a, d, &mut v);
    v
}

fn addr_v4() -> impl Strategy<Value = SocketAddrV4> {
    (any::<u32>(), 1u16..=u16::MAX).prop_map(|(ip, p)| SocketAddrV4::new(Ipv4Addr::from(ip), p))
}

/// Random IPv6 addresses, biased towards the shapes that exercise `::` compression and the
/// IPv4-mapped dotted form of `Display`.
fn ip_v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<u128>().prop_map(Ipv6Addr::from),
        // Few non-zero groups: long zero runs.
        (any::<[u16; 8]>(), any::<u8>()).prop_map(|(mut g, mask)| {
            for (i, x) in g.iter_mut().enumerate() {
                if mask & (1 << i) == 0 {
                    *x = 0;
                }
            }
            Ipv6Addr::from(g)
        }),
        any::<u32>().prop_map(|v| Ipv4Addr::from(v).to_ipv6_mapped()),
        Just(Ipv6Addr::UNSPECIFIED),
        Just(Ipv6Addr::LOCALHOST),
    ]
}

fn addr_any() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        addr_v4().prop_map(SocketAddr::V4),
        (ip_v6(), 1u16..=u16::MAX).prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(ip), p)),
    ]
}

/// RFC 2428 delimiters that are unambiguous for formatted output of the given family:
/// 33..=126 minus digits (which may occur in a port), `.` (IPv4 and the dotted tail of
/// IPv4-mapped IPv6), and for IPv6 also `:` and hex letters (either case; `Display` prints
/// lower case, but a peer may send upper case).
fn delim_for(ipv6: bool) -> impl Strategy<Value = u8> {
    (33u8..=126).prop_filter("ambiguous delimiter", move |&d| {
        !d.is_ascii_digit() && d != b'.' && !(ipv6 && (d == b':' || d.is_ascii_hexdigit()))
    })
}

/// Arbitrary byte strings weighted towards the characters the grammar cares about.
fn ftpish() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => b'0'..=b'9',
        2 => Just(b','),
        1 => Just(b'.'),
        1 => Just(b':'),
        2 => Just(b'|'),
        1 => Just(b'('),
        1 => Just(b')'),
        1 => Just(b' '),
        1 => Just(b'!'),
        1 => b'a'..=b'f',
        1 => any::<u8>(),
    ];
    proptest::collection::vec(byte, 0..40)
}

fn prefix() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        Just(&b""[..]),
        Just(&b"PORT "[..]),
        Just(&b"port  "[..]),
        Just(&b"EPRT "[..]),
        Just(&b"EPRT |"[..]),
        Just(&b"EPRT |1|"[..]),
        Just(&b"EPRT |2|"[..]),
        Just(&b"227 "[..]),
        Just(&b"227 Entering Passive Mode ("[..]),
        Just(&b"227-"[..]),
        Just(&b"229 "[..]),
        Just(&b"229 Entering Extended Passive Mode ("[..]),
        Just(&b"229 (|||"[..]),
        Just(&b"AUTH "[..]),
        Just(&b"EPSV"[..]),
    ]
}

/// Every invariant the parser promises, checked on one line (ftpct-testutil, shared with the
/// parser fuzz target).
fn check_invariants(line: &[u8]) {
    ftpct_testutil::parser::check_line(line);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    // ---- round trips -------------------------------------------------------------------

    #[test]
    fn port_round_trip(
        a in addr_v4(),
        verb in prop_oneof![Just("PORT"), Just("port"), Just("Port"), Just("pOrT")],
        spaces in 1usize..4,
        trailing in prop_oneof![Just(""), Just(" "), Just("  \t"), Just("\r")],
    ) {
        let args = port_args(a);
        let head = format!("{verb}{}", " ".repeat(spaces));
        let line = cat(&[head.as_bytes(), &args, trailing.as_bytes()]);
        prop_assert_eq!(
            parse_command(&line),
            Ok(Command::Port(Found { addr: a, span: head.len()..head.len() + args.len() }))
        );
    }

    #[test]
    fn eprt_round_trip_v4(a in addr_v4(), d in delim_for(false), spaces in 1usize..3) {
        let a = SocketAddr::V4(a);
        let args = eprt_args(a, d);
        prop_assert_eq!(args.first(), Some(&d));
        let head = format!("EPRT{}", " ".repeat(spaces));
        let line = cat(&[head.as_bytes(), &args]);
        prop_assert_eq!(
            parse_command(&line),
            Ok(Command::Eprt {
                found: Found { addr: a, span: head.len()..line.len() },
                delim: d,
            })
        );
    }

    #[test]
    fn eprt_round_trip_v6(ip in ip_v6(), port in 1u16..=u16::MAX, d in delim_for(true)) {
        let a = SocketAddr::new(IpAddr::V6(ip), port);
        let args = eprt_args(a, d);
        prop_assert_eq!(args.first(), Some(&d));
        let line = cat(&[b"eprt ", &args]);
        prop_assert_eq!(
            parse_command(&line),
            Ok(Command::Eprt { found: Found { addr: a, span: 5..line.len() }, delim: d })
        );
    }

    /// Whatever delimiter the caller passes (even an ambiguous or invalid one), the formatted
    /// argument parses back to the address; the client's delimiter is kept when it is safe.
    #[test]
    fn eprt_format_any_delim_reparses(a in addr_any(), d in any::<u8>()) {
        let args = eprt_args(a, d);
        let line = cat(&[b"EPRT ", &args]);
        let Ok(Command::Eprt { found, delim }) = parse_command(&line) else {
            return Err(TestCaseError::fail(format!("{:?}", String::from_utf8_lossy(&line))));
        };
        prop_assert_eq!(found.addr, a);
        prop_assert_eq!(found.span, 5..line.len());
        if eprt_delim_unambiguous(d, a.is_ipv6()) {
            prop_assert_eq!(delim, d);
        } else {
            prop_assert_eq!(delim, b'|');
        }
    }

    #[test]
    fn p227_round_trip(
        a in addr_v4(),
        template in prop_oneof![
            Just(("227 Entering Passive Mode (", ").")),
            Just(("227 Entering Passive Mode (", ")")),
            Just(("227 Entering passive mode (", ").")),
            Just(("227 =", "")),
            Just(("227 Entering Passive Mode. ", "")),
            Just(("227 Passive mode on ", " ok")),
            Just(("227-Entering Passive Mode (", ")")),
            Just((" (", ")")),
            Just(("", "")),
        ],
    ) {
        let args = port_args(a);
        let (pre, post) = template;
        let line = cat(&[pre.as_bytes(), &args, post.as_bytes()]);
        prop_assert_eq!(
            parse_227(&line),
            Ok(Found { addr: a, span: pre.len()..pre.len() + args.len() })
        );
    }

    #[test]
    fn p229_round_trip(
        port in 1u16..=u16::MAX,
        d in (33u8..=126).prop_filter("digit", |d| !d.is_ascii_digit()),
        template in prop_oneof![
            Just(("229 Entering Extended Passive Mode (", ")")),
            Just(("229 Entering extended passive mode (", ").")),
            Just(("229 Extended Passive mode OK (", ")")),
            Just(("229-Entering Extended Passive Mode (", ")")),
            Just(("229 ", "")),
            Just(("229 Extended passive ", " ok")),
        ],
    ) {
        let (pre, post) = template;
        let paren = pre.ends_with('(');
        // Without the parenthesis, a '(' delimiter would itself open the parenthesised form.
        prop_assume!(paren || d != b'(');
        let mut digits = Vec::new();
        format_port_number(port, &mut digits);
        let start = pre.len() + 3;
        let line = cat(&[pre.as_bytes(), &[d, d, d], &digits, &[d], post.as_bytes()]);
        prop_assert_eq!(
            parse_229(&line),
            Ok(Found { addr: port, span: start..start + digits.len() })
        );
    }

    #[test]
    fn port_number_formats_like_display(p in any::<u16>()) {
        let mut v = b"x".to_vec();
        format_port_number(p, &mut v);
        prop_assert_eq!(v, format!("x{p}").into_bytes());
    }

    // ---- differential checks against simple models -------------------------------------

    /// PORT with six random fields of 0–4 digits: accepted exactly when each field is 1–3
    /// digits, ≤ 255, and the port is not 0.
    #[test]
    fn port_fields_model(fields in proptest::collection::vec("[0-9]{0,4}", 4..8)) {
        let arg = fields.join(",");
        let line = format!("PORT {arg}");
        let model = (|| {
            if fields.len() != 6 {
                return None;
            }
            let mut n = [0u8; 6];
            for (slot, f) in n.iter_mut().zip(&fields) {
                if f.is_empty() || f.len() > 3 {
                    return None;
                }
                *slot = u8::try_from(f.parse::<u32>().ok()?).ok()?;
            }
            let port = u16::from(n[4]) * 256 + u16::from(n[5]);
            (port != 0).then(|| SocketAddrV4::new(Ipv4Addr::new(n[0], n[1], n[2], n[3]), port))
        })();
        match (parse_command(line.as_bytes()), model) {
            (Ok(Command::Port(f)), Some(a)) => {
                prop_assert_eq!(f.addr, a);
                prop_assert_eq!(f.span, 5..line.len());
            }
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "{line:?}: got {got:?}, model {want:?}"),
        }
    }

    /// EPRT af 1 accepts exactly what std's (strict, no leading zeros) `Ipv4Addr` parser
    /// accepts.
    #[test]
    fn eprt_v4_matches_std(text in "[0-9.]{0,18}") {
        let line = format!("EPRT |1|{text}|2000|");
        let std_ip = text.parse::<Ipv4Addr>().ok();
        match (parse_command(line.as_bytes()), std_ip) {
            (Ok(Command::Eprt { found, .. }), Some(ip)) => {
                prop_assert_eq!(found.addr, SocketAddr::new(IpAddr::V4(ip), 2000));
            }
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "{line:?}: got {got:?}, std {want:?}"),
        }
    }

    /// EPRT af 2 accepts exactly what std's `Ipv6Addr` parser accepts.
    #[test]
    fn eprt_v6_matches_std(text in "[0-9a-fA-F:.]{0,24}") {
        let line = format!("EPRT !2!{text}!2000!");
        let std_ip = text.parse::<Ipv6Addr>().ok();
        match (parse_command(line.as_bytes()), std_ip) {
            (Ok(Command::Eprt { found, .. }), Some(ip)) => {
                prop_assert_eq!(found.addr, SocketAddr::new(IpAddr::V6(ip), 2000));
            }
            (Err(ParseError::FamilyMismatch), None) => {
                prop_assert!(text.parse::<Ipv4Addr>().is_ok());
            }
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "{line:?}: got {got:?}, std {want:?}"),
        }
    }

    /// 227: any digit-free text before the address, anything but a digit or ',' after it.
    #[test]
    fn p227_free_text(a in addr_v4(), pre in "[^0-9]{0,30}", post in "([^0-9,].*)?") {
        let args = port_args(a);
        let line = cat(&[b"227 ", pre.as_bytes(), &args, post.as_bytes()]);
        let start = 4 + pre.len();
        prop_assert_eq!(
            parse_227(&line),
            Ok(Found { addr: a, span: start..start + args.len() })
        );
    }

    // ---- never panics; invariants hold ---------------------------------------------------

    #[test]
    fn arbitrary_bytes(line in proptest::collection::vec(any::<u8>(), 0..64)) {
        check_invariants(&line);
    }

    #[test]
    fn structured_bytes(p in prefix(), rest in ftpish()) {
        check_invariants(&cat(&[p, &rest]));
    }

    /// Real-looking lines with one byte changed.
    #[test]
    fn mutated_real_lines(
        which in 0usize..8,
        at in any::<prop::sample::Index>(),
        b in any::<u8>(),
    ) {
        const LINES: [&[u8]; 8] = [
            b"PORT 10,0,2,15,156,65",
            b"EPRT |1|10.0.2.15|40001|",
            b"EPRT |2|fd00::2|40001|",
            b"227 Entering Passive Mode (10,0,2,15,117,48).",
            b"227 =10,0,2,15,117,48",
            b"229 Entering Extended Passive Mode (|||30000|)",
            b"229 |||30000|",
            b"AUTH TLS",
        ];
        let mut line = LINES[which].to_vec();
        let i = at.index(line.len());
        line[i] = b;
        check_invariants(&line);
    }
}

#[test]
fn long_inputs_do_not_panic() {
    let mut long = b"PORT ".to_vec();
    long.extend(std::iter::repeat_n(b'9', 100_000));
    assert_eq!(parse_command(&long), Err(ParseError::BadNumber));
    let mut long = b"227 ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 100_000));
    assert_eq!(parse_227(&long), Err(ParseError::NoAddress));
    let mut long = b"229 ".to_vec();
    long.extend(std::iter::repeat_n(b'|', 100_000));
    assert_eq!(parse_229(&long), Err(ParseError::NoAddress));
    let mut long = b"EPRT |2|".to_vec();
    long.extend(std::iter::repeat_n(b':', 100_000));
    long.extend(b"|1|");
    assert_eq!(parse_command(&long), Err(ParseError::BadAddress));
}

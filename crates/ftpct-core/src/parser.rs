//! FTP control-channel line parser and formatter (RFC 959, RFC 1123 §4.1.2.6, RFC 2428).
//!
//! Works on one complete line at a time, without its line terminator (`\r\n` or `\n`), as
//! the session's stream reassembly hands it over. Pure functions: no allocation except the
//! formatters, which append to a caller-owned buffer.
//!
//! Every address-carrying result reports the byte range of the line that holds the address
//! text, so the rewriter replaces exactly that range and keeps everything else byte for byte.
//!
//! # Robustness
//!
//! No function here panics, whatever the input: the module is compiled with clippy's
//! `indexing_slicing`, `arithmetic_side_effects`, `unwrap_used`, `expect_used` and `panic`
//! lints denied, all numbers are read with a bounded digit count, and every span is derived
//! from sub-slices of the input, so it always lies within the line. This is exercised by
//! property tests (`tests/parser_props.rs`) and a `cargo fuzz` target (`fuzz/`).
//!
//! # Grammar accepted
//!
//! Commands (client → server), verbs case-insensitive, verb at byte 0, followed by a space
//! or the end of the line (`PORTX`, ` PORT ...` and `PORT\t...` are [`Command::Other`]).
//! Below, SP+ is one or more spaces and WS* any ASCII whitespace (space, tab, CR, LF, FF):
//!
//! - `PORT` SP+ `h1,h2,h3,h4,p1,p2` WS*: each field 1–3 decimal digits (leading zeros allowed,
//!   read as decimal, as RFC 959 and the kernel's `nf_conntrack_ftp` do), ≤ 255, no spaces
//!   anywhere inside; port `p1*256+p2` in 1–65535. Only whitespace may follow `p2`.
//! - `EPRT` SP+ `<d><af><d><addr><d><port><d>` WS*: `<d>` is any RFC 2428 delimiter, ASCII
//!   33..=126, digits included (`nf_conntrack_ftp` refuses digits; here a field simply cannot
//!   contain the delimiter), the fields are split at the next `<d>` left to right (as servers
//!   do), so e.g. `EPRT 51510.0.0.1520005` is `10.0.0.1` port 2000, and a line whose fields
//!   contain its delimiter (`EPRT 31310.0.0.3320003`) is refused;
//!   `<af>` is exactly `1` (IPv4) or `2` (IPv6). An IPv4 `<addr>` is a strict dotted quad:
//!   four fields of 1–3 digits, ≤ 255, and no leading zero (glibc's `inet_aton`, which some
//!   servers use, reads `010` as octal 8: refusing it keeps the ALG and the server from
//!   disagreeing on the address). An IPv6 `<addr>` is what `std::net::Ipv6Addr` parses (no
//!   zone index). `<port>` is 1–5 decimal digits, 1–65535.
//! - `PASV`, `EPSV`: recognised whatever argument follows (servers ignore or refuse unknown
//!   arguments; either way no reply of the wrong kind follows).
//! - `AUTH` SP+ (`TLS` | `SSL` | `TLS-C` | `TLS-P`) WS*, any case: [`Command::AuthTls`]. Any
//!   other mechanism is [`Command::Other`].
//!
//! Replies (server → client):
//!
//! - 227: after the reply code (if the line starts with one: three digits then space, `-` or
//!   the end; a continuation line is scanned from its first byte), the first ASCII digit
//!   starts `h1,h2,h3,h4,p1,p2` (RFC 1123 §4.1.2.6), read with the PORT rules. No retry at a
//!   later digit: like the kernel, the first digit decides. Anything may follow `p2` except a
//!   `,` (a seventh field). No spaces are accepted after the commas: the only server found
//!   sending `(h1, h2, ...)` is the FTP service built into Bochs' emulated "vnet" network,
//!   whose traffic stays inside the emulator and never crosses a netfilter hook; the kernel's
//!   helper refuses such replies too, and a stricter grammar leaves less room for disagreement
//!   between the ALG and the client.
//! - 229: the first `(` is followed by `<d><d><d><port><d>)` (`<d>` as for EPRT, the same four
//!   times; anything may follow the `)`). A line without `(` is scanned for the first
//!   `<d><d><d><digits><d>`.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;

/// Why a line could not be parsed. The parser never panics on any input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// No address at all: `PORT` / `EPRT` without an argument, a 227 / 229 reply without
    /// any digit or delimiter pattern (e.g. pure-ftpd's `227 Logout.`).
    #[error("no address found in the line")]
    NoAddress,
    /// An empty number, a number with too many digits, a non-digit inside a number.
    #[error("malformed number")]
    BadNumber,
    /// A PORT / 227 field or an EPRT IPv4 octet above 255.
    #[error("octet out of range (> 255)")]
    OctetRange,
    /// Port 0, or above 65535.
    #[error("port out of range (must be 1-65535)")]
    PortRange,
    /// Fewer or more than six PORT / 227 fields, more than four EPRT delimiters, or anything
    /// but whitespace after the argument of PORT / EPRT.
    #[error("wrong number of fields")]
    FieldCount,
    /// An RFC 2428 delimiter outside 33..=126 (for 229 also a digit), or not the same each
    /// time, or missing.
    #[error("bad or missing RFC 2428 delimiter")]
    BadDelimiter,
    /// EPRT network protocol field other than `1` or `2`.
    #[error("unknown RFC 2428 network protocol (must be 1 or 2)")]
    BadFamily,
    /// EPRT address text that is neither a strict dotted quad nor an IPv6 address.
    #[error("malformed network address")]
    BadAddress,
    /// EPRT `1` with an IPv6 address, or `2` with an IPv4 address.
    #[error("address family does not match the network protocol field")]
    FamilyMismatch,
}

impl ParseError {
    /// For event lines, replay output and metrics.
    pub fn label(self) -> &'static str {
        match self {
            ParseError::NoAddress => "no_address",
            ParseError::BadNumber => "bad_number",
            ParseError::OctetRange => "octet_range",
            ParseError::PortRange => "port_range",
            ParseError::FieldCount => "field_count",
            ParseError::BadDelimiter => "bad_delimiter",
            ParseError::BadFamily => "bad_family",
            ParseError::BadAddress => "bad_address",
            ParseError::FamilyMismatch => "family_mismatch",
        }
    }
}

/// An address found in a line, and where its text is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found<A> {
    /// The address (and port) announced.
    pub addr: A,
    /// Byte range of the line to replace when rewriting.
    /// - PORT / 227: the `h1,h2,h3,h4,p1,p2` text.
    /// - EPRT: the whole argument including its delimiters, e.g. `|1|10.0.0.2|4000|`.
    /// - 229: the port digits only.
    pub span: Range<usize>,
}

/// A client → server command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `PORT h1,h2,h3,h4,p1,p2`
    Port(Found<SocketAddrV4>),
    /// `EPRT <d>1<d>a.b.c.d<d>port<d>` or `<d>2<d>ipv6<d>port<d>`; `delim` is `<d>`.
    Eprt {
        /// The address and port, and where their text is.
        found: Found<SocketAddr>,
        /// The delimiter character.
        delim: u8,
    },
    /// `PASV` (any argument is ignored, as servers do)
    Pasv,
    /// `EPSV`, `EPSV 1`, `EPSV 2`, `EPSV ALL` (any argument is accepted: a server answers an
    /// unknown one with an error, not with a 229)
    Epsv,
    /// `AUTH TLS`, `AUTH SSL`, `AUTH TLS-C`, `AUTH TLS-P` (any case)
    AuthTls,
    /// Any other command (verb is not one of the above).
    Other,
}

/// The start of a reply line: `NNN ` (final line) or `NNN-` (first line of a multi-line reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyStart {
    /// The reply code (100 to 999).
    pub code: u16,
    /// True for `NNN-` (more lines follow, ending with a line that starts `NNN `).
    pub multiline: bool,
}

// ---------------------------------------------------------------------------------------------
// Small helpers. Every "rest" slice handled below is a suffix of the line, so its position in
// the line is `line.len() - rest.len()`: spans are computed that way, never by index arithmetic
// that could leave the line.

/// Position in `line` of `suffix`, a suffix of `line`.
#[inline]
fn pos(line: &[u8], suffix: &[u8]) -> usize {
    line.len().saturating_sub(suffix.len())
}

#[inline]
fn tail(s: &[u8], n: usize) -> &[u8] {
    s.get(n..).unwrap_or_default()
}

#[inline]
fn only_ws(s: &[u8]) -> bool {
    s.iter().all(u8::is_ascii_whitespace)
}

#[inline]
fn trim_ws_end(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i.saturating_add(1));
    s.get(..n).unwrap_or_default()
}

#[inline]
fn skip_spaces(s: &[u8]) -> &[u8] {
    tail(s, s.iter().take_while(|&&b| b == b' ').count())
}

/// A 229 delimiter: printable ASCII 33..=126, digits excluded (the port is read as the digits
/// after three delimiters, so a digit delimiter would be ambiguous; `nf_conntrack_ftp` refuses
/// them too).
#[inline]
fn is_delim(b: u8) -> bool {
    is_eprt_delim(b) && !b.is_ascii_digit()
}

/// An EPRT delimiter (RFC 2428): printable ASCII 33..=126. The fields are split at it, so a
/// digit works as long as no field contains it.
#[inline]
fn is_eprt_delim(b: u8) -> bool {
    (33..=126).contains(&b)
}

/// Reads 1..=`MAX` decimal digits at the start of `s` (`MAX` ≤ 9). More digits, or none, is
/// [`ParseError::BadNumber`]; never overflows.
#[inline]
fn dec<const MAX: usize>(s: &[u8]) -> Result<(u32, &[u8]), ParseError> {
    let mut v: u32 = 0;
    let mut n: usize = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        if n == MAX {
            return Err(ParseError::BadNumber);
        }
        // At most MAX ≤ 9 digits: v < 10^9, no wrap can happen.
        v = v
            .wrapping_mul(10)
            .wrapping_add(u32::from(b.wrapping_sub(b'0')));
        n = n.wrapping_add(1);
    }
    if n == 0 {
        return Err(ParseError::BadNumber);
    }
    Ok((v, tail(s, n)))
}

/// One PORT / 227 field: 1–3 digits, ≤ 255.
#[inline]
fn octet(s: &[u8]) -> Result<(u8, &[u8]), ParseError> {
    let (v, rest) = dec::<3>(s)?;
    let v = u8::try_from(v).map_err(|_| ParseError::OctetRange)?;
    Ok((v, rest))
}

/// A port number: 1–5 digits, 1..=65535.
#[inline]
fn port_number(s: &[u8]) -> Result<(u16, &[u8]), ParseError> {
    let (v, rest) = dec::<5>(s)?;
    match u16::try_from(v) {
        Ok(p) if p != 0 => Ok((p, rest)),
        _ => Err(ParseError::PortRange),
    }
}

/// `h1,h2,h3,h4,p1,p2` at the start of `s`; returns the address and what follows `p2`.
/// A `,` right after `p2` (a seventh field) is [`ParseError::FieldCount`].
fn six_fields(s: &[u8]) -> Result<(SocketAddrV4, &[u8]), ParseError> {
    let mut f = [0u8; 6];
    let mut rest = s;
    for (k, slot) in f.iter_mut().enumerate() {
        if k != 0 {
            rest = match rest.split_first() {
                Some((&b',', r)) => r,
                _ => return Err(ParseError::FieldCount),
            };
        }
        let (v, r) = octet(rest)?;
        *slot = v;
        rest = r;
    }
    if rest.first() == Some(&b',') {
        return Err(ParseError::FieldCount);
    }
    let [a, b, c, d, p1, p2] = f;
    let port = u16::from_be_bytes([p1, p2]);
    if port == 0 {
        return Err(ParseError::PortRange);
    }
    Ok((SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port), rest))
}

/// Strict dotted quad: exactly four fields of 1–3 digits, no leading zero, ≤ 255.
fn ipv4_strict(s: &[u8]) -> Result<Ipv4Addr, ParseError> {
    let mut o = [0u8; 4];
    let mut rest = s;
    for (k, slot) in o.iter_mut().enumerate() {
        if k != 0 {
            rest = rest.strip_prefix(b".").ok_or(ParseError::BadAddress)?;
        }
        let (v, r) = dec::<3>(rest).map_err(|_| ParseError::BadAddress)?;
        if rest.first() == Some(&b'0') && pos(rest, r) > 1 {
            return Err(ParseError::BadAddress);
        }
        *slot = u8::try_from(v).map_err(|_| ParseError::OctetRange)?;
        rest = r;
    }
    if !rest.is_empty() {
        return Err(ParseError::BadAddress);
    }
    Ok(Ipv4Addr::from(o))
}

/// IPv6 text as `std` parses it. The longest valid text is 45 bytes
/// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`); longer input is refused up front.
fn ipv6_text(s: &[u8]) -> Option<Ipv6Addr> {
    if s.len() > 45 {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Splits `s` at the first `d`: (before, after).
#[inline]
fn split_at_delim(s: &[u8], d: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == d)?;
    Some((s.get(..i)?, tail(s, i.saturating_add(1))))
}

// ---------------------------------------------------------------------------------------------
// Commands.

/// Parses a client → server line. Verbs are case-insensitive; leading spaces are not allowed
/// (a command must start at the line start).
///
/// `Err` only when the verb is PORT/EPRT and its argument is invalid. See the module
/// documentation for the exact grammar.
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let Some((head, rest)) = line.split_first_chunk::<4>() else {
        return Ok(Command::Other);
    };
    if !matches!(rest.first(), None | Some(&b' ')) {
        return Ok(Command::Other);
    }
    match &head.map(|b| b.to_ascii_uppercase()) {
        b"PASV" => Ok(Command::Pasv),
        b"EPSV" => Ok(Command::Epsv),
        verb @ (b"PORT" | b"EPRT" | b"AUTH") => with_argument(verb, line, skip_spaces(rest)),
        _ => Ok(Command::Other),
    }
}

/// The verbs whose argument matters (`verb` upper case; `arg` after the verb and its spaces).
/// Out of line, so that the other commands (most lines) take the short path above.
#[inline(never)]
fn with_argument(verb: &[u8; 4], line: &[u8], arg: &[u8]) -> Result<Command, ParseError> {
    match verb {
        b"PORT" => parse_port_arg(line, arg).map(Command::Port),
        b"EPRT" => parse_eprt_arg(line, arg),
        _ if is_tls_mechanism(trim_ws_end(arg)) => Ok(Command::AuthTls),
        _ => Ok(Command::Other),
    }
}

fn is_tls_mechanism(m: &[u8]) -> bool {
    [&b"TLS"[..], b"SSL", b"TLS-C", b"TLS-P"]
        .iter()
        .any(|k| m.eq_ignore_ascii_case(k))
}

/// `h1,...,p2` WS*; `arg` is the suffix of `line` after the verb and its spaces.
fn parse_port_arg(line: &[u8], arg: &[u8]) -> Result<Found<SocketAddrV4>, ParseError> {
    if only_ws(arg) {
        return Err(ParseError::NoAddress);
    }
    let (addr, after) = six_fields(arg)?;
    if !only_ws(after) {
        // `...,p2x`: the last number runs into garbage; `...,p2 x`: something after it.
        return Err(match after.first() {
            Some(b) if b.is_ascii_whitespace() => ParseError::FieldCount,
            _ => ParseError::BadNumber,
        });
    }
    Ok(Found {
        addr,
        span: pos(line, arg)..pos(line, after),
    })
}

/// `<d><af><d><addr><d><port><d>` WS*; `arg` is the suffix of `line` after the verb and its
/// spaces.
fn parse_eprt_arg(line: &[u8], arg: &[u8]) -> Result<Command, ParseError> {
    let Some((&d, body)) = arg.split_first() else {
        return Err(ParseError::NoAddress);
    };
    if only_ws(arg) {
        return Err(ParseError::NoAddress);
    }
    if !is_eprt_delim(d) {
        return Err(ParseError::BadDelimiter);
    }
    let (af, rest) = split_at_delim(body, d).ok_or(ParseError::BadDelimiter)?;
    let (addr_text, rest) = split_at_delim(rest, d).ok_or(ParseError::BadDelimiter)?;
    let (port_text, after) = split_at_delim(rest, d).ok_or(ParseError::BadDelimiter)?;
    if !only_ws(after) {
        return Err(ParseError::FieldCount);
    }
    let ip = match af {
        b"1" => match ipv4_strict(addr_text) {
            Ok(a) => IpAddr::V4(a),
            Err(_) if ipv6_text(addr_text).is_some() => return Err(ParseError::FamilyMismatch),
            Err(e) => return Err(e),
        },
        b"2" => match ipv6_text(addr_text) {
            Some(a) => IpAddr::V6(a),
            None if ipv4_strict(addr_text).is_ok() => return Err(ParseError::FamilyMismatch),
            None => return Err(ParseError::BadAddress),
        },
        _ => return Err(ParseError::BadFamily),
    };
    let (port, junk) = port_number(port_text)?;
    if !junk.is_empty() {
        return Err(ParseError::BadNumber);
    }
    Ok(Command::Eprt {
        found: Found {
            addr: SocketAddr::new(ip, port),
            span: pos(line, arg)..pos(line, after),
        },
        delim: d,
    })
}

// ---------------------------------------------------------------------------------------------
// Replies.

/// Recognises `NNN ` / `NNN-` / `NNN` (end of line) at the start of a reply line.
/// Returns `None` for a line that does not start with three digits (a continuation line).
pub fn parse_reply_start(line: &[u8]) -> Option<ReplyStart> {
    let (&[a, b, c], rest) = line.split_first_chunk::<3>()?;
    if !(a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit()) {
        return None;
    }
    let multiline = match rest.first() {
        None | Some(&b' ') => false,
        Some(&b'-') => true,
        Some(_) => return None,
    };
    let digit = |x: u8| u16::from(x.wrapping_sub(b'0'));
    // ≤ 999: no wrap.
    let code = digit(a)
        .wrapping_mul(100)
        .wrapping_add(digit(b).wrapping_mul(10))
        .wrapping_add(digit(c));
    Some(ReplyStart { code, multiline })
}

/// The line after its reply code (`NNN ` / `NNN-` / `NNN`), or the whole line if it does not
/// start with one (a continuation line). The separator is kept; callers scan past it.
#[inline]
fn after_reply_code(line: &[u8]) -> &[u8] {
    if parse_reply_start(line).is_some() {
        tail(line, 3)
    } else {
        line
    }
}

/// Finds the `h1,h2,h3,h4,p1,p2` of a 227 reply in `line` (the whole line including the code),
/// scanning for the first digit after the reply code as RFC 1123 says, so that
/// `227 Entering Passive Mode (h1,...)`, `227 =h1,...`, `227 Entering passive mode. h1,...`
/// and a trailing `.` all work.
///
/// A continuation line of a multi-line reply (not starting with `NNN ` / `NNN-`) is scanned
/// from its first byte. `0,0,0,0` is returned as `0.0.0.0`. The first digit decides: if the
/// six fields starting there are invalid, the error is returned without looking further.
pub fn parse_227(line: &[u8]) -> Result<Found<SocketAddrV4>, ParseError> {
    let body = after_reply_code(line);
    let start = body
        .iter()
        .position(u8::is_ascii_digit)
        .ok_or(ParseError::NoAddress)?;
    let s = tail(body, start);
    let (addr, after) = six_fields(s)?;
    Ok(Found {
        addr,
        span: pos(line, s)..pos(line, after),
    })
}

/// Finds the port of a 229 reply: `229 Entering Extended Passive Mode (|||port|)`, any
/// delimiter in 33..=126 except digits, the same one four times.
///
/// The first `(` after the reply code must be followed by `<d><d><d><port><d>)`; anything may
/// follow the `)`. A line without `(` (not seen from real servers, but RFC 2428 only says the
/// reply text contains the pattern) is scanned for the first `<d><d><d><digits><d>`, and
/// [`ParseError::NoAddress`] is returned if there is none.
pub fn parse_229(line: &[u8]) -> Result<Found<u16>, ParseError> {
    let body = after_reply_code(line);
    if let Some(i) = body.iter().position(|&b| b == b'(') {
        let s = tail(body, i.saturating_add(1));
        let (found, after) = epsv_pattern(line, s)?;
        return match after.first() {
            Some(&b')') => Ok(found),
            _ => Err(ParseError::BadDelimiter),
        };
    }
    let mut s = body;
    while let Some((&d, rest)) = s.split_first() {
        if is_delim(d) && rest.starts_with(&[d, d]) {
            let digits = tail(rest, 2);
            let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            if n != 0 && digits.get(n) == Some(&d) {
                return epsv_pattern(line, s).map(|(found, _)| found);
            }
        }
        s = rest;
    }
    Err(ParseError::NoAddress)
}

/// `<d><d><d><port><d>` at the start of `s` (a suffix of `line`); returns the port with the
/// span of its digits, and what follows the last delimiter.
fn epsv_pattern<'a>(line: &[u8], s: &'a [u8]) -> Result<(Found<u16>, &'a [u8]), ParseError> {
    let Some((&[d, d2, d3], digits)) = s.split_first_chunk::<3>() else {
        return Err(ParseError::BadDelimiter);
    };
    if !is_delim(d) || d2 != d || d3 != d {
        return Err(ParseError::BadDelimiter);
    }
    let (port, rest) = port_number(digits)?;
    let after = rest.strip_prefix(&[d]).ok_or(ParseError::BadDelimiter)?;
    Ok((
        Found {
            addr: port,
            span: pos(line, digits)..pos(line, rest),
        },
        after,
    ))
}

// ---------------------------------------------------------------------------------------------
// Formatters.

/// Appends the decimal digits of `v`.
#[inline]
fn push_dec(out: &mut Vec<u8>, v: u16) {
    let mut buf = [0u8; 5];
    let mut x = v;
    let mut start = buf.len();
    for slot in buf.iter_mut().rev() {
        // `x % 10` < 10: the `as u8` never truncates.
        *slot = b'0' | (x % 10) as u8;
        x /= 10;
        start = start.saturating_sub(1);
        if x == 0 {
            break;
        }
    }
    out.extend_from_slice(tail(&buf, start));
}

fn push_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr, sep: u8) {
    let [a, b, c, d] = ip.octets();
    push_dec(out, a.into());
    out.push(sep);
    push_dec(out, b.into());
    out.push(sep);
    push_dec(out, c.into());
    out.push(sep);
    push_dec(out, d.into());
}

/// Appends `h1,h2,h3,h4,p1,p2` for `addr`.
pub fn format_port_args(addr: SocketAddrV4, out: &mut Vec<u8>) {
    let [p1, p2] = addr.port().to_be_bytes();
    push_ipv4(out, *addr.ip(), b',');
    out.push(b',');
    push_dec(out, p1.into());
    out.push(b',');
    push_dec(out, p2.into());
}

/// Whether `delim` can delimit the EPRT text of any address of this family and any port
/// without ambiguity: in 33..=126, not a digit (the parser takes digit delimiters, but a
/// rewritten address or port may contain the digit), and not a byte that can occur in the
/// address text (`.` for IPv4; `.`, `:` and hex letters of either case for IPv6).
pub fn eprt_delim_unambiguous(delim: u8, ipv6: bool) -> bool {
    is_delim(delim) && delim != b'.' && !(ipv6 && (delim == b':' || delim.is_ascii_hexdigit()))
}

/// Appends `<d>1<d>a.b.c.d<d>port<d>` or `<d>2<d>ipv6<d>port<d>`.
///
/// `delim` is normally the client's own delimiter ([`Command::Eprt::delim`]). If it cannot
/// delimit this address unambiguously (see [`eprt_delim_unambiguous`]; e.g. a client used
/// `f` with an IPv4 address that is now rewritten to IPv6), `|` is used instead, so the
/// output always parses back to `addr`. The IPv6 text is RFC 5952 form (std's `Display`).
pub fn format_eprt_args(addr: SocketAddr, delim: u8, out: &mut Vec<u8>) {
    let d = if eprt_delim_unambiguous(delim, addr.is_ipv6()) {
        delim
    } else {
        b'|'
    };
    out.push(d);
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&[b'1', d]);
            push_ipv4(out, ip, b'.');
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&[b'2', d]);
            // Writing to a Vec cannot fail; Display for Ipv6Addr does not allocate.
            let _ = write!(out, "{ip}");
        }
    }
    out.push(d);
    push_dec(out, addr.port());
    out.push(d);
}

/// Appends the decimal port (for a 229 rewrite).
pub fn format_port_number(port: u16, out: &mut Vec<u8>) {
    push_dec(out, port);
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
mod tests {
    use super::*;
    use std::net::SocketAddrV6;

    fn v4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn v6(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(ip.parse().unwrap(), port, 0, 0))
    }

    /// The span's text, for readable assertions.
    fn text<'a>(line: &'a [u8], span: &Range<usize>) -> &'a str {
        std::str::from_utf8(&line[span.clone()]).unwrap()
    }

    fn port(line: &str) -> (SocketAddrV4, String) {
        match parse_command(line.as_bytes()) {
            Ok(Command::Port(f)) => (f.addr, text(line.as_bytes(), &f.span).to_owned()),
            other => panic!("{line:?} -> {other:?}"),
        }
    }

    fn eprt(line: &str) -> (SocketAddr, u8, String) {
        match parse_command(line.as_bytes()) {
            Ok(Command::Eprt { found, delim }) => (
                found.addr,
                delim,
                text(line.as_bytes(), &found.span).to_owned(),
            ),
            other => panic!("{line:?} -> {other:?}"),
        }
    }

    fn p227(line: &str) -> (SocketAddrV4, String) {
        let f = parse_227(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?} -> {e:?}"));
        (f.addr, text(line.as_bytes(), &f.span).to_owned())
    }

    fn p229(line: &str) -> (u16, String) {
        let f = parse_229(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?} -> {e:?}"));
        (f.addr, text(line.as_bytes(), &f.span).to_owned())
    }

    fn cmd_err(line: &str) -> ParseError {
        match parse_command(line.as_bytes()) {
            Err(e) => e,
            ok => panic!("{line:?} -> {ok:?}, expected an error"),
        }
    }

    fn cmd(line: &str) -> Command {
        parse_command(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?} -> {e:?}"))
    }

    // ---- PORT ------------------------------------------------------------------------------

    #[test]
    fn port_curl() {
        // curl 8.x, active mode.
        assert_eq!(
            port("PORT 10,0,2,15,156,65"),
            (v4("10.0.2.15:40001"), "10,0,2,15,156,65".into())
        );
    }

    #[test]
    fn port_ftplib_and_lower_case() {
        // python ftplib: 'PORT ' + ','.join(host.split('.') + [p1, p2])
        assert_eq!(port("PORT 127,0,0,1,200,10").0, v4("127.0.0.1:51210"));
        assert_eq!(port("port 10,0,0,1,4,1").0, v4("10.0.0.1:1025"));
        assert_eq!(port("PoRt 10,0,0,1,4,1").0, v4("10.0.0.1:1025"));
    }

    #[test]
    fn port_span_is_exact() {
        let line = b"PORT   192,168,1,2,195,149  ";
        let Ok(Command::Port(f)) = parse_command(line) else {
            panic!()
        };
        assert_eq!(f.span, 7..26);
        assert_eq!(&line[f.span], b"192,168,1,2,195,149");
        assert_eq!(f.addr, v4("192.168.1.2:50069"));
    }

    #[test]
    fn port_edges() {
        assert_eq!(port("PORT 0,0,0,0,0,1").0, v4("0.0.0.0:1"));
        assert_eq!(
            port("PORT 255,255,255,255,255,255").0,
            v4("255.255.255.255:65535")
        );
        // Leading zeros are decimal (RFC 959 fields are decimal; the kernel agrees).
        assert_eq!(port("PORT 010,000,002,015,004,001").0, v4("10.0.2.15:1025"));
        assert_eq!(port("PORT 1,2,3,4,5,6\t \r").0, v4("1.2.3.4:1286"));
    }

    #[test]
    fn port_errors() {
        use ParseError::*;
        assert_eq!(cmd_err("PORT 256,0,0,1,4,1"), OctetRange);
        assert_eq!(cmd_err("PORT 10,0,0,1,4,256"), OctetRange);
        assert_eq!(cmd_err("PORT 999,0,0,1,4,1"), OctetRange);
        assert_eq!(cmd_err("PORT 10,0,0,1,0,0"), PortRange);
        assert_eq!(cmd_err("PORT 10,0,0,1,4"), FieldCount);
        assert_eq!(cmd_err("PORT 10,0,0,1,4,1,7"), FieldCount);
        assert_eq!(cmd_err("PORT 10,0,0,1,4,1,"), FieldCount);
        assert_eq!(cmd_err("PORT 10,0,,1,4,1"), BadNumber);
        assert_eq!(cmd_err("PORT ,0,0,1,4,1"), BadNumber);
        assert_eq!(cmd_err("PORT 10,0,0,1,4,"), BadNumber);
        assert_eq!(cmd_err("PORT 99999999999999999999,0,0,1,4,1"), BadNumber);
        assert_eq!(cmd_err("PORT 10,0,0,1,4,99999999999999999999"), BadNumber);
        assert_eq!(cmd_err("PORT 0010,0,0,1,4,1"), BadNumber);
        assert_eq!(cmd_err("PORT +10,0,0,1,4,1"), BadNumber);
        assert_eq!(cmd_err("PORT -1,0,0,1,4,1"), BadNumber);
        assert_eq!(cmd_err("PORT 10, 0,0,1,4,1"), BadNumber);
        assert_eq!(cmd_err("PORT 10 ,0,0,1,4,1"), FieldCount);
        assert_eq!(cmd_err("PORT 10,0,0,1,4,1x"), BadNumber);
        assert_eq!(cmd_err("PORT 10,0,0,1,4,1 x"), FieldCount);
        assert_eq!(cmd_err("PORT 10.0.0.1,4,1"), FieldCount);
        assert_eq!(cmd_err("PORT"), NoAddress);
        assert_eq!(cmd_err("PORT "), NoAddress);
        assert_eq!(cmd_err("PORT    "), NoAddress);
    }

    #[test]
    fn verb_position_and_boundary() {
        // Leading whitespace: not a command (NAT slipstreaming defence).
        assert_eq!(cmd(" PORT 10,0,0,1,4,1"), Command::Other);
        assert_eq!(cmd("\tPORT 10,0,0,1,4,1"), Command::Other);
        // PORT inside a line.
        assert_eq!(cmd("NOOP PORT 10,0,0,1,4,1"), Command::Other);
        assert_eq!(cmd("USER PORT 10,0,0,1,4,1"), Command::Other);
        assert_eq!(cmd("xPORT 10,0,0,1,4,1"), Command::Other);
        // Verb boundary.
        assert_eq!(cmd("PORTX 10,0,0,1,4,1"), Command::Other);
        assert_eq!(cmd("PORT\t10,0,0,1,4,1"), Command::Other);
        assert_eq!(cmd("EPRTX |1|10.0.0.1|2000|"), Command::Other);
        assert_eq!(cmd("PASVX"), Command::Other);
        assert_eq!(cmd(""), Command::Other);
        assert_eq!(cmd("POR"), Command::Other);
        assert_eq!(cmd("USER anonymous"), Command::Other);
        assert_eq!(cmd("RETR PORT"), Command::Other);
    }

    // ---- EPRT ------------------------------------------------------------------------------

    #[test]
    fn eprt_clients() {
        // curl
        assert_eq!(
            eprt("EPRT |1|10.0.2.15|40001|"),
            (
                "10.0.2.15:40001".parse().unwrap(),
                b'|',
                "|1|10.0.2.15|40001|".into()
            )
        );
        // lftp
        assert_eq!(
            eprt("EPRT |2|fd00::2|40001|"),
            (v6("fd00::2", 40001), b'|', "|2|fd00::2|40001|".into())
        );
        // python ftplib: 'EPRT |' + af + '|' + host + '|' + port + '|'
        assert_eq!(
            eprt("EPRT |1|127.0.0.1|36741|").0,
            "127.0.0.1:36741".parse().unwrap()
        );
        assert_eq!(eprt("EPRT |2|::1|36741|").0, v6("::1", 36741));
        assert_eq!(
            eprt("eprt |1|10.0.0.1|2000|").0,
            "10.0.0.1:2000".parse().unwrap()
        );
    }

    #[test]
    fn eprt_other_delimiters_and_forms() {
        assert_eq!(
            eprt("EPRT !1!10.0.0.1!2000!"),
            (
                "10.0.0.1:2000".parse().unwrap(),
                b'!',
                "!1!10.0.0.1!2000!".into()
            )
        );
        assert_eq!(
            eprt("EPRT ~2~2001:db8::1~65535~").0,
            v6("2001:db8::1", 65535)
        );
        // A letter that is not part of the address is a valid delimiter.
        assert_eq!(eprt("EPRT x1x10.0.0.1x1x").0, "10.0.0.1:1".parse().unwrap());
        // IPv4-mapped IPv6 with af 2 stays IPv6.
        assert_eq!(
            eprt("EPRT |2|::ffff:10.0.0.1|2000|").0,
            v6("::ffff:10.0.0.1", 2000)
        );
        // Uppercase hex, full form.
        assert_eq!(
            eprt("EPRT |2|FD00:0:0:0:0:0:0:2|2000|").0,
            v6("fd00::2", 2000)
        );
        // Extra spaces after the verb, trailing whitespace.
        let line = "EPRT   |1|10.0.0.1|2000|  \r";
        let (a, _, t) = eprt(line);
        assert_eq!(
            (a, t.as_str()),
            ("10.0.0.1:2000".parse().unwrap(), "|1|10.0.0.1|2000|")
        );
        let Ok(Command::Eprt { found, .. }) = parse_command(line.as_bytes()) else {
            panic!()
        };
        assert_eq!(found.span, 7..24);
    }

    #[test]
    fn eprt_errors() {
        use ParseError::*;
        assert_eq!(cmd_err("EPRT"), NoAddress);
        assert_eq!(cmd_err("EPRT  "), NoAddress);
        assert_eq!(cmd_err("EPRT |3|10.0.0.1|2000|"), BadFamily);
        assert_eq!(cmd_err("EPRT ||10.0.0.1|2000|"), BadFamily);
        assert_eq!(cmd_err("EPRT |12|10.0.0.1|2000|"), BadFamily);
        assert_eq!(cmd_err("EPRT |1|fd00::2|2000|"), FamilyMismatch);
        assert_eq!(cmd_err("EPRT |2|10.0.0.1|2000|"), FamilyMismatch);
        assert_eq!(cmd_err("EPRT |1|10.0.0.256|2000|"), OctetRange);
        assert_eq!(cmd_err("EPRT |1|10.0.0|2000|"), BadAddress);
        assert_eq!(cmd_err("EPRT |1|10.0.0.1.1|2000|"), BadAddress);
        assert_eq!(cmd_err("EPRT |1|10.0.0.01|2000|"), BadAddress);
        assert_eq!(cmd_err("EPRT |1|+10.0.0.1|2000|"), BadAddress);
        assert_eq!(cmd_err("EPRT |1|10..0.1|2000|"), BadAddress);
        assert_eq!(cmd_err("EPRT |1||2000|"), BadAddress);
        assert_eq!(cmd_err("EPRT |1|1000.0.0.1|2000|"), BadAddress);
        assert_eq!(cmd_err("EPRT |2|fd00::2%eth0|2000|"), BadAddress);
        assert_eq!(cmd_err("EPRT |2|fd00:::2|2000|"), BadAddress);
        assert_eq!(cmd_err("EPRT |2|host.example|2000|"), BadAddress);
        assert_eq!(cmd_err("EPRT |1|10.0.0.1|0|"), PortRange);
        assert_eq!(cmd_err("EPRT |1|10.0.0.1|65536|"), PortRange);
        assert_eq!(cmd_err("EPRT |1|10.0.0.1|99999|"), PortRange);
        assert_eq!(cmd_err("EPRT |1|10.0.0.1|99999999999999999999|"), BadNumber);
        assert_eq!(cmd_err("EPRT |1|10.0.0.1||"), BadNumber);
        assert_eq!(cmd_err("EPRT |1|10.0.0.1|20x0|"), BadNumber);
        assert_eq!(cmd_err("EPRT |1|10.0.0.1|+2000|"), BadNumber);
        assert_eq!(cmd_err("EPRT |1|10.0.0.1|2000"), BadDelimiter);
        assert_eq!(cmd_err("EPRT |1|10.0.0.1!2000!"), BadDelimiter);
        // A digit delimiter: the fields are split at it, so `1` splits into more fields.
        assert_eq!(cmd_err("EPRT 1110.0.0.1120001"), FieldCount);
        // `3` inside the address cuts the fields differently: refused.
        assert_eq!(cmd_err("EPRT 31310.0.0.3320003"), FieldCount);
        assert_eq!(cmd_err("EPRT \x7f1\x7f10.0.0.1\x7f2000\x7f"), BadDelimiter);
        assert_eq!(cmd_err("EPRT \t1\t10.0.0.1\t2000\t"), BadDelimiter);
        assert_eq!(
            cmd_err("EPRT \u{e9}1\u{e9}10.0.0.1\u{e9}2000\u{e9}"),
            BadDelimiter
        );
        assert_eq!(cmd_err("EPRT |1|10.0.0.1|2000|x"), FieldCount);
        // Any RFC 2428 delimiter, digits included, when no field contains it.
        assert_eq!(
            cmd("EPRT 51510.0.0.1520005"),
            Command::Eprt {
                found: Found {
                    addr: "10.0.0.1:2000".parse().unwrap(),
                    span: 5..22,
                },
                delim: b'5',
            }
        );
        assert_eq!(cmd_err("EPRT |1|10.0.0.1|2000|3|"), FieldCount);
    }

    // ---- PASV / EPSV / AUTH ----------------------------------------------------------------

    #[test]
    fn simple_verbs() {
        assert_eq!(cmd("PASV"), Command::Pasv);
        assert_eq!(cmd("pasv"), Command::Pasv);
        assert_eq!(cmd("PASV "), Command::Pasv);
        assert_eq!(cmd("EPSV"), Command::Epsv);
        assert_eq!(cmd("epsv"), Command::Epsv);
        assert_eq!(cmd("EPSV 1"), Command::Epsv);
        assert_eq!(cmd("EPSV 2"), Command::Epsv);
        assert_eq!(cmd("EPSV ALL"), Command::Epsv);
        assert_eq!(cmd("epsv all"), Command::Epsv);
        assert_eq!(cmd("AUTH TLS"), Command::AuthTls);
        assert_eq!(cmd("auth tls"), Command::AuthTls);
        assert_eq!(cmd("AUTH SSL"), Command::AuthTls);
        assert_eq!(cmd("AUTH TLS-C"), Command::AuthTls);
        assert_eq!(cmd("AUTH tls-p"), Command::AuthTls);
        assert_eq!(cmd("AUTH  TLS "), Command::AuthTls);
        assert_eq!(cmd("AUTH GSSAPI"), Command::Other);
        assert_eq!(cmd("AUTH KERBEROS_V4"), Command::Other);
        assert_eq!(cmd("AUTH TLSX"), Command::Other);
        assert_eq!(cmd("AUTH"), Command::Other);
        assert_eq!(cmd(" AUTH TLS"), Command::Other);
        assert_eq!(cmd("AUTHTLS"), Command::Other);
    }

    // ---- reply start -----------------------------------------------------------------------

    #[test]
    fn reply_start() {
        let rs = |s: &str| parse_reply_start(s.as_bytes());
        assert_eq!(
            rs("227 Entering"),
            Some(ReplyStart {
                code: 227,
                multiline: false
            })
        );
        assert_eq!(
            rs("230-Welcome"),
            Some(ReplyStart {
                code: 230,
                multiline: true
            })
        );
        assert_eq!(
            rs("200"),
            Some(ReplyStart {
                code: 200,
                multiline: false
            })
        );
        assert_eq!(
            rs("000 x"),
            Some(ReplyStart {
                code: 0,
                multiline: false
            })
        );
        assert_eq!(
            rs("999-"),
            Some(ReplyStart {
                code: 999,
                multiline: true
            })
        );
        assert_eq!(rs(" 227 x"), None);
        assert_eq!(rs("22 x"), None);
        assert_eq!(rs("2270 x"), None);
        assert_eq!(rs("227x"), None);
        assert_eq!(rs("227\t"), None);
        assert_eq!(rs("192,168,1,2,4,1"), None);
        assert_eq!(rs(""), None);
        assert_eq!(rs("ab"), None);
    }

    // ---- 227 -------------------------------------------------------------------------------

    #[test]
    fn p227_real_servers() {
        let want = (v4("10.0.2.15:30000"), "10,0,2,15,117,48".to_owned());
        // vsftpd, proftpd, Microsoft IIS
        assert_eq!(p227("227 Entering Passive Mode (10,0,2,15,117,48)."), want);
        // pure-ftpd, FileZilla Server, wu-ftpd
        assert_eq!(p227("227 Entering Passive Mode (10,0,2,15,117,48)"), want);
        // pyftpdlib
        assert_eq!(p227("227 Entering passive mode (10,0,2,15,117,48)."), want);
        // D. J. Bernstein's publicfile, and the RFC 1123 example style
        assert_eq!(p227("227 =10,0,2,15,117,48"), want);
        assert_eq!(p227("227 Entering Passive Mode. 10,0,2,15,117,48"), want);
        assert_eq!(p227("227 Passive mode on 10,0,2,15,117,48"), want);
        assert_eq!(p227("227 Passive mode OK (10,0,2,15,117,48)"), want);
        // First line of a multi-line reply, and a continuation line.
        assert_eq!(p227("227-Entering Passive Mode (10,0,2,15,117,48)"), want);
        assert_eq!(p227(" Entering Passive Mode (10,0,2,15,117,48)"), want);
        assert_eq!(p227("10,0,2,15,117,48"), want);
        assert_eq!(p227("(10,0,2,15,117,48)"), want);
    }

    #[test]
    fn p227_span_and_zero_address() {
        let line = b"227 Entering Passive Mode (192,168,1,2,195,149).";
        let f = parse_227(line).unwrap();
        assert_eq!(f.span, 27..46);
        assert_eq!(f.addr, v4("192.168.1.2:50069"));
        assert_eq!(
            p227("227 Entering Passive Mode (0,0,0,0,195,149)."),
            (v4("0.0.0.0:50069"), "0,0,0,0,195,149".into())
        );
    }

    #[test]
    fn p227_errors() {
        use ParseError::*;
        let e = |s: &str| parse_227(s.as_bytes()).unwrap_err();
        assert_eq!(e("227 Logout."), NoAddress);
        assert_eq!(e("227"), NoAddress);
        assert_eq!(e("227 "), NoAddress);
        assert_eq!(e(""), NoAddress);
        assert_eq!(e("227 Entering Passive Mode (10,0,2,15,0,0)."), PortRange);
        assert_eq!(
            e("227 Entering Passive Mode (256,0,2,15,117,48)."),
            OctetRange
        );
        assert_eq!(e("227 Entering Passive Mode (10,0,2,15,117)."), FieldCount);
        assert_eq!(
            e("227 Entering Passive Mode (10,0,2,15,117,48,1)."),
            FieldCount
        );
        assert_eq!(e("227 Entering Passive Mode (10,0,2,,117,48)."), BadNumber);
        assert_eq!(
            e("227 Entering Passive Mode (1000,0,2,15,117,48)."),
            BadNumber
        );
        assert_eq!(
            e("227 Entering Passive Mode (99999999999999999999,0,2,15,117,48)."),
            BadNumber
        );
        // Spaces after commas (Bochs' emulator-internal FTP server) are refused, like the
        // kernel does.
        assert_eq!(
            e("227 Entering passive mode (10, 0, 2, 2, 117, 48)."),
            BadNumber
        );
        // The first digit decides; no retry further on.
        assert_eq!(e("227 Mode 2 (10,0,2,15,117,48)"), FieldCount);
    }

    // ---- 229 -------------------------------------------------------------------------------

    #[test]
    fn p229_real_servers() {
        let want = (30000, "30000".to_owned());
        // vsftpd, proftpd, FileZilla Server, IIS
        assert_eq!(p229("229 Entering Extended Passive Mode (|||30000|)"), want);
        // pyftpdlib
        assert_eq!(
            p229("229 Entering extended passive mode (|||30000|)."),
            want
        );
        // pure-ftpd
        assert_eq!(p229("229 Extended Passive mode OK (|||30000|)"), want);
        assert_eq!(p229("229-Entering Extended Passive Mode (|||30000|)"), want);
        assert_eq!(p229("229 Entering Extended Passive Mode (!!!30000!)"), want);
        assert_eq!(p229("229 (###30000#) whatever"), want);
        assert_eq!(p229("229 ((((30000()"), want);
        assert_eq!(p229("229 ()))30000))"), want);
        // Without '(': scanned for the pattern.
        assert_eq!(p229("229 Extended passive |||30000|"), want);
        assert_eq!(p229("229 a||b |||30000|"), want);
        assert_eq!(p229("|||30000|"), want);
        assert_eq!(p229("229 Entering Extended Passive Mode (|||1|)").0, 1);
        assert_eq!(
            p229("229 Entering Extended Passive Mode (|||65535|)").0,
            65535
        );
    }

    #[test]
    fn p229_span() {
        let line = b"229 Entering Extended Passive Mode (|||6446|)";
        let f = parse_229(line).unwrap();
        assert_eq!(f.span, 39..43);
        assert_eq!(&line[f.span], b"6446");
        assert_eq!(f.addr, 6446);
    }

    #[test]
    fn p229_errors() {
        use ParseError::*;
        let e = |s: &str| parse_229(s.as_bytes()).unwrap_err();
        assert_eq!(e("229 Entering Extended Passive Mode"), NoAddress);
        assert_eq!(e("229"), NoAddress);
        assert_eq!(e(""), NoAddress);
        assert_eq!(e("229 ||30000|"), NoAddress);
        assert_eq!(e("229 (|||0|)"), PortRange);
        assert_eq!(e("229 (|||65536|)"), PortRange);
        assert_eq!(e("229 (|||99999999999999999999|)"), BadNumber);
        assert_eq!(e("229 (||||)"), BadNumber);
        assert_eq!(e("229 (|||x|)"), BadNumber);
        assert_eq!(e("229 (|!|30000|)"), BadDelimiter);
        assert_eq!(e("229 (!!!30000|)"), BadDelimiter);
        assert_eq!(e("229 (|||30000|"), BadDelimiter);
        assert_eq!(e("229 (|||30000|]"), BadDelimiter);
        assert_eq!(e("229 (111300001)"), BadDelimiter);
        assert_eq!(e("229 ( ||30000 )"), BadDelimiter);
        assert_eq!(e("229 ("), BadDelimiter);
        assert_eq!(e("229 |||0|"), PortRange);
    }

    // ---- formatters ------------------------------------------------------------------------

    fn fmt(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = b"prefix:".to_vec();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formatters() {
        assert_eq!(
            fmt(|o| format_port_args(v4("10.0.0.2:4000"), o)),
            "prefix:10,0,0,2,15,160"
        );
        assert_eq!(
            fmt(|o| format_port_args(v4("255.255.255.255:65535"), o)),
            "prefix:255,255,255,255,255,255"
        );
        assert_eq!(
            fmt(|o| format_port_args(v4("0.0.0.0:0"), o)),
            "prefix:0,0,0,0,0,0"
        );
        assert_eq!(
            fmt(|o| format_eprt_args("10.0.0.2:4000".parse().unwrap(), b'|', o)),
            "prefix:|1|10.0.0.2|4000|"
        );
        assert_eq!(
            fmt(|o| format_eprt_args(v6("fd00::2", 4000), b'|', o)),
            "prefix:|2|fd00::2|4000|"
        );
        assert_eq!(
            fmt(|o| format_eprt_args(v6("FD00:0:0:0:0:0:0:2", 4000), b'!', o)),
            "prefix:!2!fd00::2!4000!"
        );
        // Ambiguous or invalid delimiters fall back to '|'.
        assert_eq!(
            fmt(|o| format_eprt_args(v6("fd00::2", 4000), b'f', o)),
            "prefix:|2|fd00::2|4000|"
        );
        assert_eq!(
            fmt(|o| format_eprt_args("10.0.0.2:4000".parse().unwrap(), b'.', o)),
            "prefix:|1|10.0.0.2|4000|"
        );
        assert_eq!(
            fmt(|o| format_eprt_args("10.0.0.2:4000".parse().unwrap(), b'1', o)),
            "prefix:|1|10.0.0.2|4000|"
        );
        assert_eq!(
            fmt(|o| format_eprt_args("10.0.0.2:4000".parse().unwrap(), b' ', o)),
            "prefix:|1|10.0.0.2|4000|"
        );
        // 'f' is fine for IPv4.
        assert_eq!(
            fmt(|o| format_eprt_args("10.0.0.2:4000".parse().unwrap(), b'f', o)),
            "prefix:f1f10.0.0.2f4000f"
        );
        for p in [0u16, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 65535] {
            assert_eq!(fmt(|o| format_port_number(p, o)), format!("prefix:{p}"));
        }
    }

    #[test]
    fn delimiter_ambiguity() {
        assert!(eprt_delim_unambiguous(b'|', false));
        assert!(eprt_delim_unambiguous(b'|', true));
        assert!(eprt_delim_unambiguous(b'f', false));
        assert!(!eprt_delim_unambiguous(b'f', true));
        assert!(!eprt_delim_unambiguous(b'F', true));
        assert!(eprt_delim_unambiguous(b'g', true));
        assert!(!eprt_delim_unambiguous(b':', true));
        assert!(eprt_delim_unambiguous(b':', false));
        assert!(!eprt_delim_unambiguous(b'.', false));
        assert!(!eprt_delim_unambiguous(b'7', false));
        assert!(!eprt_delim_unambiguous(32, false));
        assert!(!eprt_delim_unambiguous(127, false));
    }

    #[test]
    fn formatted_output_reparses() {
        let a = v4("192.168.1.2:50069");
        let mut line = b"PORT ".to_vec();
        format_port_args(a, &mut line);
        assert_eq!(
            cmd(std::str::from_utf8(&line).unwrap()),
            Command::Port(Found {
                addr: a,
                span: 5..line.len()
            })
        );
        let a = v6("2001:db8::ff00:42:8329", 65535);
        let mut line = b"EPRT ".to_vec();
        format_eprt_args(a, b'#', &mut line);
        assert_eq!(
            cmd(std::str::from_utf8(&line).unwrap()),
            Command::Eprt {
                found: Found {
                    addr: a,
                    span: 5..line.len()
                },
                delim: b'#'
            }
        );
    }
}

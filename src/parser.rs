//! FTP control-channel line parser and formatter (RFC 959, RFC 1123 §4.1.2.6, RFC 2428).
//!
//! Works on one complete line at a time, without its line terminator (`\r\n` or `\n`), as
//! the session's stream reassembly hands it over. Pure functions: no allocation except the
//! formatters, which append to a caller-owned buffer.
//!
//! Every address-carrying result reports the byte range of the line that holds the address
//! text, so the rewriter replaces exactly that range and keeps everything else byte for byte.

use std::net::{SocketAddr, SocketAddrV4};
use std::ops::Range;

/// Why a line could not be parsed. The parser never panics on any input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no address found in the line")]
    NoAddress,
    #[error("malformed number")]
    BadNumber,
    #[error("octet out of range (> 255)")]
    OctetRange,
    #[error("port out of range (must be 1-65535)")]
    PortRange,
    #[error("wrong number of fields")]
    FieldCount,
    #[error("bad or missing RFC 2428 delimiter")]
    BadDelimiter,
    #[error("unknown RFC 2428 network protocol (must be 1 or 2)")]
    BadFamily,
    #[error("malformed network address")]
    BadAddress,
    #[error("address family does not match the network protocol field")]
    FamilyMismatch,
}

/// An address found in a line, and where its text is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found<A> {
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
    Eprt { found: Found<SocketAddr>, delim: u8 },
    /// `PASV`
    Pasv,
    /// `EPSV`, `EPSV 1`, `EPSV 2`, `EPSV ALL`
    Epsv,
    /// `AUTH TLS`, `AUTH SSL`, `AUTH TLS-C`, `AUTH TLS-P` (any case)
    AuthTls,
    /// Any other command (verb is not one of the above).
    Other,
}

/// The start of a reply line: `NNN ` (final line) or `NNN-` (first line of a multi-line reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyStart {
    pub code: u16,
    /// True for `NNN-` (more lines follow, ending with a line that starts `NNN `).
    pub multiline: bool,
}

/// Parses a client → server line. Verbs are case-insensitive; leading spaces are not allowed
/// (a command must start at the line start).
///
/// `Err` only when the verb is PORT/EPRT and its argument is invalid.
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let _ = line;
    Err(ParseError::NoAddress)
}

/// Recognises `NNN ` / `NNN-` / `NNN` (end of line) at the start of a reply line.
/// Returns `None` for a line that does not start with three digits (a continuation line).
pub fn parse_reply_start(line: &[u8]) -> Option<ReplyStart> {
    let _ = line;
    None
}

/// Finds the `h1,h2,h3,h4,p1,p2` of a 227 reply in `line` (the whole line including the code),
/// scanning for the first digit after the reply code as RFC 1123 says, so that
/// `227 Entering Passive Mode (h1,...)`, `227 =h1,...`, `227 Entering passive mode. h1,...`
/// and a trailing `.` all work.
pub fn parse_227(line: &[u8]) -> Result<Found<SocketAddrV4>, ParseError> {
    let _ = line;
    Err(ParseError::NoAddress)
}

/// Finds the port of a 229 reply: `229 Entering Extended Passive Mode (|||port|)`, any
/// delimiter in 33..=126, the same one four times.
pub fn parse_229(line: &[u8]) -> Result<Found<u16>, ParseError> {
    let _ = line;
    Err(ParseError::NoAddress)
}

/// Appends `h1,h2,h3,h4,p1,p2` for `addr`.
pub fn format_port_args(addr: SocketAddrV4, out: &mut Vec<u8>) {
    let _ = (addr, out);
}

/// Appends `<d>1<d>a.b.c.d<d>port<d>` or `<d>2<d>ipv6<d>port<d>`.
pub fn format_eprt_args(addr: SocketAddr, delim: u8, out: &mut Vec<u8>) {
    let _ = (addr, delim, out);
}

/// Appends the decimal port (for a 229 rewrite).
pub fn format_port_number(port: u16, out: &mut Vec<u8>) {
    let _ = (port, out);
}

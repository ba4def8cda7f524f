//! `ftpct_core::DirState::next_line` fed arbitrary chunks, checked against a model that
//! splits the concatenated stream into lines.
//!
//! Input: `max_line` (1 byte, 0..=255), the ISN (4 bytes), whether the stream starts at a line
//! start (1 byte), then chunks: a length byte and that many bytes each.
//! Invariants: no panic; every byte of every chunk is consumed (`pos` reaches the end, `next`
//! advances by the chunk length); the line buffer never holds more than `max_line + 2` bytes
//! (and its capacity stays within twice that); the lines, their sequence numbers and the
//! overlong-line reports are exactly the model's, whatever the chunking.

#![no_main]

use ftpct_core::{DirState, LineOut};
use ftpct_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Out {
    Line(u32, Vec<u8>),
    Overlong,
}

/// The lines of `stream` (starting at sequence `isn`), as `next_line` must report them once the
/// whole stream has been fed.
fn model(stream: &[u8], isn: u32, at_line_start: bool, max_line: usize) -> Vec<Out> {
    let mut out = Vec::new();
    let mut start = 0usize;
    if !at_line_start {
        match stream.iter().position(|&b| b == b'\n') {
            Some(i) => start = i + 1,
            None => return out,
        }
    }
    while start < stream.len() {
        let rest = &stream[start..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if i + 1 > max_line + 2 {
                    out.push(Out::Overlong);
                } else {
                    let mut l = rest[..i].to_vec();
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    out.push(Out::Line(isn.wrapping_add(start as u32), l));
                }
                start += i + 1;
            }
            None => {
                if rest.len() > max_line + 2 {
                    out.push(Out::Overlong);
                }
                break;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let max_line = usize::from(r.u8());
    let isn = r.u32();
    let at_line_start = r.bool();
    let cap_limit = (2 * (max_line + 2)).max(8);

    let mut d = DirState::default();
    d.sync(isn, at_line_start);
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut stream = Vec::new();
    while !r.is_empty() {
        let n = usize::from(r.u8());
        let chunk = r.bytes(n);
        stream.extend_from_slice(chunk);
        let before = d.next;
        let mut pos = 0usize;
        let mut calls = 0usize;
        loop {
            calls += 1;
            assert!(calls <= chunk.len() + 2, "next_line does not progress");
            let res = d.next_line(chunk, &mut pos, max_line, &mut buf);
            assert!(pos <= chunk.len());
            assert!(
                d.line.len() <= max_line + 2,
                "line buffer {} > {}",
                d.line.len(),
                max_line + 2
            );
            assert!(
                d.line.capacity() <= cap_limit,
                "line capacity {}",
                d.line.capacity()
            );
            assert!(
                buf.capacity() <= cap_limit,
                "out capacity {}",
                buf.capacity()
            );
            match res {
                LineOut::NeedMore => break,
                LineOut::Overlong => got.push(Out::Overlong),
                LineOut::Line(at) => {
                    assert!(buf.len() <= max_line + 1);
                    got.push(Out::Line(at, buf.clone()));
                }
            }
        }
        assert_eq!(pos, chunk.len(), "bytes left unconsumed");
        assert_eq!(d.next, before.wrapping_add(chunk.len() as u32));
    }
    assert_eq!(d.next, isn.wrapping_add(stream.len() as u32));
    let want = model(&stream, isn, at_line_start, max_line);
    assert_eq!(got, want);
    // What is buffered is the open line's bytes (unless it is being skipped).
    if !d.skipping {
        let open = stream
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if at_line_start || open > 0 {
            assert_eq!(&d.line[..], &stream[open..]);
            assert_eq!(d.line_start, isn.wrapping_add(open as u32));
        }
    }
});

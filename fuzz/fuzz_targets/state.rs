//! Feeds arbitrary bytes to the state-file loader (`ftpct::state::load_text`) and to the
//! configuration parser (`ftpct::config::parse`: TOML, and the 0.1 format through its
//! translation): both read files that an admin or a crash may have mangled, also as raw bytes
//! (`load_bytes`, which stops at a byte that is not UTF-8).
//! Checks: no panic; every record the loader accepts re-encodes to a line that
//! decodes to the same record; a file made of the accepted records replays to the same counts.

#![no_main]

use ftpct::engine::{Config, Engine};
use ftpct::state::{decode, encode, load_bytes, load_text};
use ftpct::types::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = ftpct::config::parse(&text, std::path::Path::new("fuzz.conf"));

    // As a whole file, with a valid header so that the records are replayed.
    let file = format!("ftpct-state 1 boot=B\n{text}");
    let mut engine = Engine::new(Config::default());
    let report = load_text(&file, "B", &mut engine, Timestamp(1_000_000_000));
    assert!(report.records <= file.lines().count());
    assert!(report.refused <= report.records);

    // The raw bytes (not made UTF-8): a bad byte ends the valid part like a corrupt line.
    let mut raw = b"ftpct-state 1 boot=B\n".to_vec();
    raw.extend_from_slice(data);
    let mut engine3 = Engine::new(Config::default());
    let r3 = load_bytes(&raw, "B", &mut engine3, Timestamp(1_000_000_000));
    assert!(r3.records <= raw.split(|b| *b == b'\n').count());

    // Line by line: what decodes, re-encodes and decodes the same.
    let mut again = String::from("ftpct-state 1 boot=B\n");
    let mut accepted = 0;
    for line in text.split('\0').next().unwrap_or("").lines() {
        let Some(rec) = decode(line) else { break };
        let mut enc = String::new();
        encode(&rec, &mut enc);
        assert_eq!(decode(enc.trim_end()), Some(rec));
        again.push_str(&enc);
        accepted += 1;
    }
    let mut engine2 = Engine::new(Config::default());
    let r2 = load_text(&again, "B", &mut engine2, Timestamp(1_000_000_000));
    assert_eq!(r2.records, accepted);
});

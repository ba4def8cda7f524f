//! Feeds arbitrary bytes as a capture file to `ftpct replay` (`ftpct::replay::replay`): the
//! pcap and pcapng readers, the link-layer decoders (Ethernet with VLAN tags, Linux cooked
//! v1/v2, raw IP, BSD loopback) and the core behind them, with text and JSON output.
//! Checks: no panic; a capture either replays or gives a typed error; the JSON output is one
//! object per line.

#![no_main]

use ftpct::replay::{replay, Nat, OutputFormat, ReplayOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the NAT case, so that the rewrite paths run too.
    let nat = match data.first().map(|b| b % 3) {
        Some(1) => Nat::Snat("203.0.113.1".parse().unwrap()),
        Some(2) => Nat::Dnat("203.0.113.1".parse().unwrap()),
        _ => Nat::None,
    };
    for json in [false, true] {
        let mut opts = ReplayOptions::new("fuzz.pcap");
        opts.nat = nat;
        // Small tables: the default ones (1 Mi expectations) cost milliseconds to set up.
        opts.policy.max_expectations = 256;
        opts.policy.max_sessions = 256;
        opts.format = if json {
            OutputFormat::Json
        } else {
            OutputFormat::Text
        };
        let mut out = Vec::new();
        let _ = replay(data, &opts, &mut out);
        if json {
            for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                assert!(
                    line.first() == Some(&b'{') && line.last() == Some(&b'}'),
                    "not a JSON object line: {}",
                    String::from_utf8_lossy(line)
                );
            }
        }
    }
});

//! Feeds one input line to every `ftpct::parser` function and checks the invariants:
//! no panic, every span lies within the line, the text of every span re-parses to the same
//! value, and the formatters' output for a parsed address (and for an address built from the
//! input bytes) parses back to that address.

#![no_main]

use ftpct_testutil::parser::{check_formatters_on_bytes, check_line};
use libfuzzer_sys::fuzz_target;

// The checks are ftpct-testutil's, shared with tests/parser_props.rs.
fuzz_target!(|line: &[u8]| {
    check_line(line);
    // Formatter round trips for an address taken from the input bytes themselves.
    check_formatters_on_bytes(line);
});

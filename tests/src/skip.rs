//! Tests that cannot run on this machine say so where `cargo xtask test` sees it.
//!
//! libtest has no "skipped" outcome: a test that returns early passes. So a skip writes one
//! line, `!!!!! SKIPPED <test>: <why> !!!!!`, straight to the process's stderr. That is past
//! libtest's capture (which takes only `print!`/`eprint!`), so the line shows in the output
//! of plain `cargo test` although the test passes, and `cargo xtask test` counts the test as
//! skipped, not passed, and names it in its summary.

use std::io::Write;

/// What a skip line starts with; `cargo xtask test` recognises skips by it.
pub const SKIP_MARKER: &str = "!!!!! SKIPPED ";

/// The line that reports `test` skipped because of `why`.
pub fn skip_line(test: &str, why: &str) -> String {
    format!("{SKIP_MARKER}{test}: {why} !!!!!")
}

/// The name of the running test: libtest names each test's thread after it.
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_string()
}

/// Reports the running test skipped because of `why` (the caller then returns).
pub fn skip(why: &str) {
    skip_named(&current_test(), why);
}

/// Reports `test` skipped because of `why` (the caller then returns).
pub fn skip_named(test: &str, why: &str) {
    // Its own line even when libtest has just written "test <name> ... " without a newline.
    let line = format!("\n{}\n", skip_line(test, why));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

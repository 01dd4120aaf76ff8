//! Writing results of the control commands to stdout, where a reader that went away (`| head`)
//! ends the command quietly instead of failing it.

use std::io::{self, Write};

/// Writes `line` and a newline and flushes, so that followers see each line at once.
/// `Ok(false)` means stdout was closed and the command should stop.
pub(crate) fn write_line(out: &mut impl Write, line: &str) -> io::Result<bool> {
    let written = writeln!(out, "{line}").and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error),
    }
}

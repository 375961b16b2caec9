//! What the CLI commands print: a closed pipe ends the command quietly (`sharedisk config check
//! F | head -1`), where `println!` would panic.

use std::io::{self, Write};

/// The exit status of a command whose reader went away: what a shell shows for a process that
/// SIGPIPE ended (128 + 13), so scripts see what they know from other tools.
pub const BROKEN_PIPE: u8 = 141;

/// Writes `text` to stdout; ends the process if stdout is gone.
pub fn print(text: &str) {
    write_or_exit(&mut io::stdout().lock(), text);
}

/// [`print`] and a newline.
pub fn println(text: &str) {
    print(&format!("{text}\n"));
}

/// Writes `text` and a newline to stderr; ends the process if stderr is gone.
pub fn eprintln(text: &str) {
    write_or_exit(&mut io::stderr().lock(), &format!("{text}\n"));
}

fn write_or_exit(w: &mut dyn Write, text: &str) {
    if let Err(e) = w.write_all(text.as_bytes()).and_then(|()| w.flush()) {
        // Nobody reads what we would say: stop without a word. Another error (a full disk
        // behind a redirection) is a failure; say so on stderr if it is still there.
        if e.kind() != io::ErrorKind::BrokenPipe {
            let _ = writeln!(io::stderr(), "sharedisk: cannot write the output: {e}");
            std::process::exit(1);
        }
        std::process::exit(i32::from(BROKEN_PIPE));
    }
}

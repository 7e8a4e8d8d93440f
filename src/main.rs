//! `introgy`: hands the command line over to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    introgy::cli::run()
}

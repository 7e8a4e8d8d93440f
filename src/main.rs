//! `introgy`: parses the command line and hands over to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    let env_files = match introgy::config::load_env_files() {
        Ok(files) => files,
        Err(e) => {
            eprintln!("introgy: {e}");
            return ExitCode::from(2);
        }
    };
    introgy::cli::run(&env_files)
}

//! `media-relay-install-test`: the runtime of the package install test
//! (see `media_relay_tests::install`). `cargo xtask package
//! --install-test` builds the package, installs it, runs this, and purges
//! the package again; run by hand, it checks whatever media-relay package
//! is installed. Root only. Exits non-zero after printing the failed check
//! as its last line, prefixed with `media-relay-install-test: `.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Check the installed media-relay package: files, programs, the unit, and the \
             installed daemon run as its unit would (setpriv, and systemd where it is PID 1)"
)]
struct Args {}

fn main() -> ExitCode {
    let Args {} = Args::parse();
    match media_relay_tests::install::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("media-relay-install-test: {e:#}");
            ExitCode::FAILURE
        }
    }
}

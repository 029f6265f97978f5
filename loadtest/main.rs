//! `loadtest`: not built yet (issue 4). It refuses to run rather than print made-up numbers.

fn main() -> std::process::ExitCode {
    eprintln!("loadtest: not implemented yet; it arrives with the load-testing issue");
    std::process::ExitCode::from(2)
}

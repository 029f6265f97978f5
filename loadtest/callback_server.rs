//! `callback-server`: not built yet (issues 3 and 4). It refuses to run rather than pretend to
//! receive callbacks.

fn main() -> std::process::ExitCode {
    eprintln!("callback-server: not implemented yet; it arrives with the async issue");
    std::process::ExitCode::from(2)
}

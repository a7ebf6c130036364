//! The drop-in `serviceconnectiontool` command line; all logic lives in the library.

fn main() -> std::process::ExitCode {
    serviceconnection::cli::main()
}

//! The `celeriac` binary: the command line of [`celeriac::main_with`] with
//! the task sets compiled into celeriac itself.

fn main() -> std::process::ExitCode {
    celeriac::main_with(&[])
}

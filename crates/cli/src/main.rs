fn main() -> std::process::ExitCode {
    tresor::main()
}

use std::cell::RefCell;
use std::rc::Rc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sink: blockfault::output::SharedSink = Rc::new(RefCell::new(blockfault::output::ProcessStreams));
    let cwd = std::env::current_dir().unwrap();
    let code = match args.first().map(String::as_str) {
        Some("io") => blockfault::qemu_io::main(&args[1..], &cwd, sink, &mut std::io::stdin().lock()),
        Some("img") => blockfault::img::run(&args[1..], &cwd, sink),
        _ => 2,
    };
    std::process::exit(code);
}

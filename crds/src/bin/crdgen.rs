//! Prints the PostgresCapture CRD; `make crd` writes it to crds/postgrescapture.yaml.
//! With `--reference`, prints the Markdown reference of its fields instead
//! (`make crd` writes that to docs/crd-reference.md).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => print!("{}", siphon_crds::crd_yaml()),
        ["--reference"] => print!("{}", siphon_crds::reference::document()),
        _ => {
            eprintln!("usage: crdgen [--reference]");
            std::process::exit(2);
        }
    }
}

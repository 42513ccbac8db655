//! Prints the PostgresCapture CRD; `make crd` writes it to crds/postgrescapture.yaml.

fn main() {
    print!("{}", siphon_crds::crd_yaml());
}

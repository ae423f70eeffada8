//! TLS benchmark (placeholder until the full bench lands in the next commit).
fn main() {}

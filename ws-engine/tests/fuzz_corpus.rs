//! Replays the fuzz corpus (`fuzz/corpus/frame_decoder`) through the fuzz target's check.

#[path = "../fuzz/check.rs"]
mod check;

#[test]
fn replay_frame_decoder_corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/frame_decoder");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| check::check(&data));
        assert!(r.is_ok(), "corpus input {} fails the check", path.display());
        n += 1;
    }
    assert!(n >= 10, "corpus has only {n} inputs");
    eprintln!("replayed {n} corpus inputs");
}

//! An SVG flamegraph of the [`super::folded`] stacks, drawn by `inferno`.
//!
//! Width is time: the root `ws` frame is the sum of every stage of every joined message,
//! each `conn N` frame that connection's share, and the leaves the stages, left to right
//! in pipeline order (drawn in inferno's flame-chart mode, which keeps the input order
//! instead of sorting frames by name). Sample counts are ns; hovering a
//! frame shows its ns and share. The subtitle gives the message count, the mean
//! NIC → callback-done time in µs and, with a trace header, the host and kernel.
use std::io::Write;

use inferno::flamegraph::{self, Options};

use super::folded::stacks;
use super::{ExportError, ExportInput};

/// The flamegraph's title.
pub const TITLE: &str = "ws-trace: time per stage, NIC → callback";

/// Writes the flamegraph. Fails with [`ExportError::Empty`] when there is no stage to draw.
pub fn write(input: &ExportInput<'_>, out: &mut dyn Write) -> Result<(), ExportError> {
    let c = input.correlation;
    let stacks = stacks(c);
    if stacks.is_empty() {
        return Err(ExportError::Empty);
    }
    // inferno sorts stacks by name unless drawing a flame chart, which keeps the input
    // order (reversed: it expects the newest line first). Stacks of one connection are
    // adjacent, so they still merge under one `conn N` frame.
    let lines: Vec<String> = stacks
        .iter()
        .rev()
        .map(|s| format!("{} {}", s.frames, s.ns))
        .collect();

    let totals: Vec<u64> = c.rows.iter().filter_map(|r| r.total_ns()).collect();
    let reads = c.read_rows().count();
    let mut subtitle = match reads {
        0 => format!("{} messages", c.rows.len()),
        r => format!("{} messages, {r} reads", c.rows.len() - r),
    };
    if !totals.is_empty() {
        let mean_ns = totals.iter().sum::<u64>() as f64 / totals.len() as f64;
        subtitle.push_str(&format!(
            ", mean NIC → callback done {:.1} µs",
            mean_ns / 1000.0
        ));
    }
    subtitle.push_str("; width = ns spent per stage");
    if let Some(h) = input.header {
        subtitle.push_str(&format!("; {} ({})", h.hostname, h.kernel_release));
    }

    let mut opt = Options::default();
    opt.title = TITLE.to_string();
    opt.subtitle = Some(subtitle);
    opt.count_name = "ns".to_string();
    opt.name_type = "Stage:".to_string();
    opt.flame_chart = true;
    opt.deterministic = true;
    opt.hash = true;
    flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut *out)
        .map_err(ExportError::Flamegraph)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testdata;
    use quick_xml::Reader;
    use quick_xml::events::Event as Xml;

    #[test]
    fn svg_is_well_formed_and_names_the_stages() {
        let text = testdata::render(write);

        let mut reader = Reader::from_str(&text);
        let mut depth = 0i64;
        let mut elements = 0;
        let mut saw_svg_root = false;
        loop {
            match reader.read_event().unwrap() {
                Xml::Start(e) => {
                    if depth == 0 {
                        saw_svg_root = e.name().as_ref() == b"svg";
                    }
                    depth += 1;
                    elements += 1;
                }
                Xml::End(_) => {
                    depth -= 1;
                    assert!(depth >= 0);
                }
                Xml::Empty(_) => elements += 1,
                Xml::Eof => break,
                _ => {}
            }
        }
        assert_eq!(depth, 0);
        assert!(saw_svg_root);
        assert!(elements > 10);

        assert!(text.contains(TITLE));
        for stage in [
            "nic→softirq",
            "softirq→tcp",
            "tcp→waking",
            "waking→wakeup",
            "recv_start→decrypt",
            "callback→callback_done",
            "conn 1",
            "conn 2",
        ] {
            assert!(text.contains(stage), "{stage}");
        }
        assert!(text.contains("5 messages"));
        // Pipeline order, left to right (frames are written in drawing order).
        let at = |s: &str| text.find(&format!("<title>{s} (")).unwrap();
        assert!(at("nic→softirq") < at("softirq→tcp"));
        assert!(at("softirq→tcp") < at("parsed→callback"));
        assert!(at("parsed→callback") < at("callback→callback_done"));
        assert!(text.contains("<title>callback→callback_done (51,400 ns"));
    }
}

//! SVG flamegraphs with inferno: on-CPU (samples), off-CPU (µs blocked), and both in one
//! picture where off-CPU frames are blue and on-CPU frames keep the warm palette.

use std::io::Write;

use inferno::flamegraph::{self, Options, color::PaletteMap};

use super::{
    Profile, ProfileError, View,
    folded::{OFF_CPU_SUFFIX, lines},
};

/// Blue shades for off-CPU frames, picked by name so a frame keeps its shade.
fn blue(name: &str) -> inferno::flamegraph::color::Color {
    let h = name
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let v = (h % 60) as u8;
    inferno::flamegraph::color::Color {
        r: 40 + v / 2,
        g: 90 + v,
        b: 200 + v / 2,
    }
}

/// Writes one view as an SVG flamegraph.
pub fn write(profile: &Profile, view: View, out: &mut dyn Write) -> Result<(), ProfileError> {
    let lines = lines(profile, view);
    if lines.is_empty() {
        return Err(ProfileError::Empty);
    }
    let text: Vec<String> = lines.iter().map(|(s, v)| format!("{s} {v}")).collect();
    let secs = profile.duration_ns as f64 / 1e9;
    let mut palette = PaletteMap::default();
    let mut opt = Options::default();
    opt.deterministic = true;
    opt.hash = true;
    match view {
        View::OnCpu => {
            opt.title = "ws-trace profile: on-CPU".into();
            opt.count_name = "samples".into();
            opt.subtitle = Some(format!(
                "{} samples at {} Hz over {secs:.1} s; kernel frames end in _[k]",
                profile.samples(),
                profile.freq
            ));
        }
        View::OffCpu => {
            opt.title = "ws-trace profile: off-CPU (time blocked)".into();
            opt.count_name = "µs".into();
            opt.subtitle = Some(format!(
                "{:.1} ms switched out over {secs:.1} s, by the stack each thread left the CPU with",
                profile.off_cpu_ns() as f64 / 1e6
            ));
            opt.colors = flamegraph::color::Palette::Basic(flamegraph::color::BasicPalette::Blue);
        }
        View::Combined => {
            opt.title = "ws-trace profile: on-CPU and off-CPU".into();
            opt.count_name = "µs".into();
            opt.subtitle = Some(format!(
                "on-CPU (warm) = samples × {} µs; off-CPU (blue) = time blocked; over {secs:.1} s",
                1_000_000 / profile.freq.max(1)
            ));
            for (stack, _) in &lines {
                for frame in stack.split(';').filter(|f| f.ends_with(OFF_CPU_SUFFIX)) {
                    palette.insert(frame, blue(frame));
                }
                palette.insert("off-CPU", blue("off-CPU"));
            }
            opt.palette_map = Some(&mut palette);
        }
    }
    flamegraph::from_lines(&mut opt, text.iter().map(String::as_str), &mut *out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::testdata;

    #[test]
    fn every_view_draws_its_frames() {
        let p = testdata::profile();
        for (view, want) in [
            (View::OnCpu, "burn"),
            (View::OffCpu, "wait"),
            (View::Combined, "wait [off]"),
        ] {
            let mut out = Vec::new();
            write(&p, view, &mut out).unwrap();
            let svg = String::from_utf8(out).unwrap();
            assert!(svg.starts_with("<?xml"), "{view:?}");
            assert!(svg.contains(want), "{view:?} lacks {want}");
        }
    }
}

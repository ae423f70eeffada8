//! `--series`: the target's CPU % (user and system), RSS and context switches per
//! interval, from `/proc/PID/stat`, `/proc/PID/status` and each thread's
//! `/proc/PID/task/TID/status`, summed over its processes;
//! written as CSV and drawn as an SVG chart (plotters): CPU, RSS and switches stacked.

use std::{collections::BTreeMap, collections::BTreeSet, io::Write, time::Duration};

/// One interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Point {
    /// End of the interval, seconds since the session started.
    pub t_s: f64,
    /// User CPU in the interval, % of one core.
    pub user_pct: f64,
    /// System CPU in the interval, % of one core.
    pub system_pct: f64,
    /// Resident set size at the end, KiB.
    pub rss_kib: u64,
    /// Voluntary context switches in the interval.
    pub voluntary_switches: u64,
    /// Involuntary context switches in the interval.
    pub involuntary_switches: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    utime: u64,
    stime: u64,
    rss_kib: u64,
    vol: u64,
    invol: u64,
}

fn read_counters(tgid: u32) -> Option<Counters> {
    let stat = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after `) `.
    let utime = f.get(11)?.parse().ok()?;
    let stime = f.get(12)?.parse().ok()?;
    let field = |status: &str, name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_ascii_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{tgid}/status")).ok()?;
    // Context switches are counted per thread: sum them over the process's threads.
    let (mut vol, mut invol) = (0, 0);
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{tgid}/task")) {
        for task in tasks.flatten() {
            if let Ok(t) = std::fs::read_to_string(task.path().join("status")) {
                vol += field(&t, "voluntary_ctxt_switches:");
                invol += field(&t, "nonvoluntary_ctxt_switches:");
            }
        }
    }
    Some(Counters {
        utime,
        stime,
        rss_kib: field(&status, "VmRSS:"),
        vol,
        invol,
    })
}

/// Reads the counters once per interval.
#[derive(Debug)]
pub struct Sampler {
    interval: Duration,
    next: Duration,
    last_t: Duration,
    last: BTreeMap<u32, Counters>,
    points: Vec<Point>,
    ticks_per_s: f64,
}

impl Sampler {
    /// A sampler taking one point per `interval`.
    pub fn new(interval: Duration) -> Sampler {
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Sampler {
            interval,
            next: Duration::ZERO,
            last_t: Duration::ZERO,
            last: BTreeMap::new(),
            points: Vec::new(),
            ticks_per_s: if ticks > 0 { ticks as f64 } else { 100.0 },
        }
    }

    /// Takes a point if an interval has passed since the last one.
    pub fn poll(&mut self, tgids: &BTreeSet<u32>, elapsed: Duration) {
        if elapsed < self.next {
            return;
        }
        let now: BTreeMap<u32, Counters> = tgids
            .iter()
            .filter_map(|&t| Some((t, read_counters(t)?)))
            .collect();
        if self.next > Duration::ZERO {
            let dt = (elapsed - self.last_t).as_secs_f64().max(1e-3);
            let mut p = Point {
                t_s: elapsed.as_secs_f64(),
                ..Point::default()
            };
            for (tgid, c) in &now {
                let before = self.last.get(tgid).copied().unwrap_or_default();
                p.user_pct +=
                    c.utime.saturating_sub(before.utime) as f64 / self.ticks_per_s / dt * 100.0;
                p.system_pct +=
                    c.stime.saturating_sub(before.stime) as f64 / self.ticks_per_s / dt * 100.0;
                p.rss_kib += c.rss_kib;
                p.voluntary_switches += c.vol.saturating_sub(before.vol);
                p.involuntary_switches += c.invol.saturating_sub(before.invol);
            }
            self.points.push(p);
        }
        self.last = now;
        self.last_t = elapsed;
        self.next = elapsed + self.interval;
    }

    /// The points taken.
    pub fn finish(self) -> Vec<Point> {
        self.points
    }
}

/// Writes the series as CSV.
pub fn write_csv(points: &[Point], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "t_s,user_pct,system_pct,rss_kib,voluntary_switches,involuntary_switches"
    )?;
    for p in points {
        writeln!(
            out,
            "{:.3},{:.1},{:.1},{},{},{}",
            p.t_s,
            p.user_pct,
            p.system_pct,
            p.rss_kib,
            p.voluntary_switches,
            p.involuntary_switches
        )?;
    }
    Ok(())
}

/// Draws the series as an SVG chart: CPU % (user, system), RSS (MiB), context switches
/// per second, one panel each, over the same time axis.
pub fn write_chart(points: &[Point], path: &std::path::Path) -> Result<(), super::ProfileError> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| super::ProfileError::Chart(e.to_string());
    if points.is_empty() {
        return Err(super::ProfileError::Chart("no points in the series".into()));
    }
    let t_max = points.iter().map(|p| p.t_s).fold(0.0, f64::max).max(0.1);
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((3, 1));
    let interval = |i: usize| {
        let prev = if i == 0 { 0.0 } else { points[i - 1].t_s };
        (points[i].t_s - prev).max(1e-3)
    };
    type Line = (&'static str, RGBColor, Vec<(f64, f64)>);
    let cpu: Vec<Line> = vec![
        (
            "user %",
            RED,
            points.iter().map(|p| (p.t_s, p.user_pct)).collect(),
        ),
        (
            "system %",
            BLUE,
            points.iter().map(|p| (p.t_s, p.system_pct)).collect(),
        ),
    ];
    let rss: Vec<Line> = vec![(
        "RSS MiB",
        GREEN,
        points
            .iter()
            .map(|p| (p.t_s, p.rss_kib as f64 / 1024.0))
            .collect(),
    )];
    let switches: Vec<Line> = vec![
        (
            "voluntary /s",
            MAGENTA,
            points
                .iter()
                .enumerate()
                .map(|(i, p)| (p.t_s, p.voluntary_switches as f64 / interval(i)))
                .collect(),
        ),
        (
            "involuntary /s",
            BLACK,
            points
                .iter()
                .enumerate()
                .map(|(i, p)| (p.t_s, p.involuntary_switches as f64 / interval(i)))
                .collect(),
        ),
    ];
    for (area, (title, lines)) in panels.iter().zip([
        ("CPU (% of one core)", cpu),
        ("resident memory", rss),
        ("context switches", switches),
    ]) {
        let y_max = lines
            .iter()
            .flat_map(|(_, _, v)| v.iter().map(|(_, y)| *y))
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .draw()
            .map_err(|e| err(&e))?;
        for (name, color, data) in lines {
            chart
                .draw_series(LineSeries::new(data, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_counters_and_csv() {
        let me = std::process::id();
        let c = read_counters(me).unwrap();
        assert!(c.rss_kib > 0);
        let mut s = Sampler::new(Duration::from_millis(10));
        let set = BTreeSet::from([me]);
        s.poll(&set, Duration::ZERO);
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        s.poll(&set, Duration::from_millis(30));
        let points = s.finish();
        assert_eq!(points.len(), 1);
        let mut csv = Vec::new();
        write_csv(&points, &mut csv).unwrap();
        let text = String::from_utf8(csv).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("t_s,user_pct"));
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("series.svg");
        let more = [
            points[0],
            Point {
                t_s: points[0].t_s * 2.0,
                user_pct: 50.0,
                rss_kib: 4096,
                voluntary_switches: 3,
                ..points[0]
            },
        ];
        write_chart(&more, &svg).unwrap();
        let drawn = std::fs::read_to_string(&svg).unwrap();
        assert!(drawn.contains("<svg") && drawn.contains("polyline"));
        assert!(drawn.contains("resident memory"));
    }
}

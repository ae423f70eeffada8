//! `ws-trace export`: a recorded trace as Perfetto, Chrome JSON, JSON lines, folded stacks
//! or SVG; also the export `attach -o FILE.EXT` writes at the end.
use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use ws_trace::{correlate, decode::Event, export, report, tracefile::TraceHeader};

use super::args::ExportArgs;

/// Exports a trace file.
pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let ExportArgs {
        file,
        format,
        output,
    } = args;
    let format = match format {
        Some(f) => f,
        None => format_of(&output)?,
    };
    let trace = report::load(&file).with_context(|| format!("reading {}", file.display()))?;
    for w in trace.warnings() {
        eprintln!("ws-trace: {}: {w}", file.display());
    }
    let correlation = correlate::correlate(&trace.events);
    write_export(
        format,
        &correlation,
        &trace.events,
        Some(&trace.header),
        &output,
    )?;
    say_exported(&correlation, &output, format);
    Ok(ExitCode::SUCCESS)
}

/// Tells what an export holds.
pub(super) fn say_exported(
    c: &correlate::Correlation,
    path: &std::path::Path,
    format: export::Format,
) {
    eprintln!(
        "ws-trace: {} of {} messages and {} of {} reads exported to {} ({})",
        c.messages().count(),
        c.messages,
        c.read_rows().count(),
        c.reads,
        path.display(),
        format.name()
    );
}

/// The export format an output file's extension names.
fn format_of(path: &Path) -> anyhow::Result<export::Format> {
    path.extension()
        .and_then(|e| e.to_str())
        .and_then(export::Format::from_extension)
        .with_context(|| {
            format!(
                "{}: say --format (the extension names no format: .pftrace .json .jsonl .folded .svg)",
                path.display()
            )
        })
}

/// Writes one export of `correlation` to `path`.
pub fn write_export(
    format: export::Format,
    correlation: &correlate::Correlation,
    events: &[Event],
    header: Option<&TraceHeader>,
    path: &Path,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let input = export::ExportInput {
        correlation,
        events,
        header,
    };
    export::export(format, &input, &mut out)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::flush(&mut out).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

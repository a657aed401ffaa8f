//! `netlab grid`: the compare experiment over loss × RTT at one rate, written
//! as CSV (every row of every cell), a Markdown table of goodput, and an SVG
//! plot of goodput against loss with one panel per RTT. The three files are
//! rewritten after every cell, so an interrupted grid keeps what it measured.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plotters::prelude::*;

use super::compare::{run_compare, CompareReport, CompareSpec, Protocol};
use super::delay_line::LossModel;
use super::topology::{ImpairMethod, PathSpec};
use super::units::Rate;
use super::LabError;

/// The grid to run.
#[derive(Debug, Clone)]
pub struct GridSpec {
    pub rate: Rate,
    pub losses: Vec<f64>,
    pub rtts: Vec<Duration>,
    pub seed: u64,
    pub method: ImpairMethod,
    pub duration: Duration,
    pub protocols: Vec<Protocol>,
    pub perf_bin: PathBuf,
    pub delayer_program: PathBuf,
    pub probes: u32,
}

/// One point of the grid: its RTT, its loss, and the comparison run there.
#[derive(Debug, Clone)]
pub struct GridCell {
    pub rtt: Duration,
    pub loss: f64,
    pub report: CompareReport,
}

impl GridCell {
    fn goodput(&self, protocol: &str) -> Option<f64> {
        self.report
            .rows
            .iter()
            .find(|r| r.protocol == protocol)
            .map(|r| r.goodput_mbps)
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> LabError {
    move |err| LabError::Io { what, err }
}

/// Runs every cell, RTT by RTT, and writes `grid.csv`, `grid.md`, `grid.svg` in `out`.
pub fn run_grid(spec: &GridSpec, out: &Path) -> Result<Vec<PathBuf>, LabError> {
    std::fs::create_dir_all(out).map_err(io("creating the output directory"))?;
    let names: Vec<String> = spec.protocols.iter().map(Protocol::name).collect();
    let mut cells = Vec::new();
    let files = [
        out.join("grid.csv"),
        out.join("grid.md"),
        out.join("grid.svg"),
    ];
    for &rtt in &spec.rtts {
        for &loss in &spec.losses {
            log::info!("cell: rtt {} ms, loss {}%", rtt.as_millis(), loss * 100.0);
            let report = run_compare(&CompareSpec {
                rate: spec.rate,
                path: PathSpec {
                    rtt,
                    jitter: Duration::ZERO,
                    loss: LossModel::Uniform(loss),
                    seed: spec.seed,
                },
                duration: spec.duration,
                method: spec.method,
                protocols: spec.protocols.clone(),
                perf_bin: spec.perf_bin.clone(),
                delayer_program: spec.delayer_program.clone(),
                probes: spec.probes,
            })?;
            cells.push(GridCell { rtt, loss, report });
            std::fs::write(&files[0], csv(&cells)).map_err(io("writing grid.csv"))?;
            std::fs::write(&files[1], markdown_table(&cells, &names))
                .map_err(io("writing grid.md"))?;
            plot_svg(&cells, &names, spec.rate, &files[2])?;
        }
    }
    Ok(files.to_vec())
}

/// Every row of every cell, under one header.
pub fn csv(cells: &[GridCell]) -> String {
    let mut s = format!("{}\n", CompareReport::CSV_HEADER);
    for c in cells {
        for line in c.report.csv_rows() {
            s.push_str(&line);
            s.push('\n');
        }
    }
    s
}

fn percent(loss: f64) -> String {
    format!("{}%", (loss * 1000.0).round() / 10.0)
}

/// Goodput in Mbit/s: one line per (RTT, loss), one column per protocol.
pub fn markdown_table(cells: &[GridCell], protocols: &[String]) -> String {
    let mut s = String::from("| RTT | loss each way | measured RTT |");
    for p in protocols {
        let _ = write!(s, " {p} |");
    }
    s.push_str("\n|---:|---:|---:|");
    s.push_str(&"---:|".repeat(protocols.len()));
    s.push('\n');
    for c in cells {
        let measured = c
            .report
            .measured
            .map(|m| m.rtt_median_ms)
            .filter(|v| v.is_finite())
            .map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let _ = write!(
            s,
            "| {} ms | {} | {} |",
            c.rtt.as_millis(),
            percent(c.loss),
            measured
        );
        for p in protocols {
            match c.goodput(p) {
                Some(g) => {
                    let _ = write!(s, " {g:.1} |");
                }
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    let skipped: Vec<String> = cells
        .iter()
        .flat_map(|c| {
            c.report.skipped.iter().map(move |(p, why)| {
                format!(
                    "- RTT {} ms, loss {}: {p} did not run: {why}\n",
                    c.rtt.as_millis(),
                    percent(c.loss)
                )
            })
        })
        .collect();
    if !skipped.is_empty() {
        s.push_str("\nA dash is a row that did not run:\n\n");
        s.extend(skipped);
    }
    s
}

fn plot_error(e: impl std::fmt::Display) -> LabError {
    LabError::Setup(format!("plotting failed: {e}"))
}

/// Goodput against loss, one panel per RTT, one line per protocol.
pub fn plot_svg(
    cells: &[GridCell],
    protocols: &[String],
    rate: Rate,
    path: &Path,
) -> Result<(), LabError> {
    let mut rtts: Vec<Duration> = cells.iter().map(|c| c.rtt).collect();
    rtts.dedup();
    let max_loss = cells.iter().map(|c| c.loss * 100.0).fold(1.0f64, f64::max);
    let max_goodput = cells
        .iter()
        .flat_map(|c| c.report.rows.iter().map(|r| r.goodput_mbps))
        .fold(rate.mbit(), f64::max)
        * 1.05;
    let columns = rtts.len().clamp(1, 2);
    let panel_rows = rtts.len().div_ceil(columns).max(1);
    let size = (560 * columns as u32, 400 * panel_rows as u32);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((panel_rows, columns));
    for (panel, rtt) in panels.iter().zip(&rtts) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("RTT {} ms, {}", rtt.as_millis(), rate),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..max_loss, 0f64..max_goodput)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("loss each way (%)")
            .y_desc("goodput (Mbit/s)")
            .draw()
            .map_err(plot_error)?;
        for (i, protocol) in protocols.iter().enumerate() {
            let points: Vec<(f64, f64)> = cells
                .iter()
                .filter(|c| c.rtt == *rtt)
                .filter_map(|c| c.goodput(protocol).map(|g| (c.loss * 100.0, g)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(plot_error)?
                .label(protocol.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::compare::RunResult;

    fn cell(rtt_ms: u64, loss: f64, goodputs: &[(&str, f64)]) -> GridCell {
        GridCell {
            rtt: Duration::from_millis(rtt_ms),
            loss,
            report: CompareReport {
                rate: Rate::from_mbit(100.0),
                path: PathSpec {
                    rtt: Duration::from_millis(rtt_ms),
                    jitter: Duration::ZERO,
                    loss: LossModel::Uniform(loss),
                    seed: 1,
                },
                duration: Duration::from_secs(1),
                method: Some(ImpairMethod::Nfqueue),
                measured: None,
                rows: goodputs
                    .iter()
                    .map(|&(p, g)| RunResult {
                        protocol: p.into(),
                        goodput_mbps: g,
                        retransmissions: 3,
                        rtt_ms: Some(rtt_ms as f64),
                        bytes: 1,
                        seconds: 1.0,
                        tool: "iperf3",
                    })
                    .collect(),
                skipped: vec![],
                delayer: None,
            },
        }
    }

    #[test]
    fn table_has_a_column_per_protocol_and_dashes_for_missing_rows() {
        let cells = [
            cell(2, 0.0, &[("tcp-cubic", 94.04), ("tcp-bbr", 93.0)]),
            cell(2, 0.005, &[("tcp-bbr", 91.26)]),
        ];
        let names = vec!["tcp-cubic".to_string(), "tcp-bbr".to_string()];
        let t = markdown_table(&cells, &names);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "| RTT | loss each way | measured RTT | tcp-cubic | tcp-bbr |"
        );
        assert_eq!(lines[2], "| 2 ms | 0% | - | 94.0 | 93.0 |");
        assert_eq!(lines[3], "| 2 ms | 0.5% | - | - | 91.3 |");
        assert_eq!(lines.len(), 4, "nothing was skipped");
        let mut late = cell(10, 0.2, &[("tcp-bbr", 2.0)]);
        late.report
            .skipped
            .push(("tcp-cubic".into(), "it hung".into()));
        let t = markdown_table(&[late], &names);
        assert!(
            t.ends_with("- RTT 10 ms, loss 20%: tcp-cubic did not run: it hung\n"),
            "{t}"
        );
    }

    #[test]
    fn csv_has_one_line_per_row_under_one_header() {
        let cells = [
            cell(2, 0.0, &[("a", 1.0), ("b", 2.0)]),
            cell(10, 0.01, &[("a", 3.0)]),
        ];
        let text = csv(&cells);
        assert_eq!(text.lines().count(), 4);
        assert!(text
            .lines()
            .nth(3)
            .unwrap()
            .starts_with("a,3.00,3,10.00,100,10,0.01,"));
    }

    #[test]
    fn plot_is_an_svg_with_every_protocol_in_its_legend() {
        let cells = [
            cell(2, 0.0, &[("rudp-bbr", 95.0), ("tcp-cubic", 94.0)]),
            cell(2, 0.1, &[("rudp-bbr", 80.0), ("tcp-cubic", 2.0)]),
            cell(40, 0.0, &[("rudp-bbr", 93.0), ("tcp-cubic", 90.0)]),
        ];
        let dir = std::env::temp_dir().join(format!("netlab-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("grid.svg");
        let names = vec!["rudp-bbr".to_string(), "tcp-cubic".to_string()];
        plot_svg(&cells, &names, Rate::from_mbit(100.0), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("rudp-bbr") && svg.contains("tcp-cubic"));
        assert!(svg.contains("RTT 40 ms"));
    }
}

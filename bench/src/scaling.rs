//! The scaling table: one axis at a time away from the base load of 20 sessions × 1 KiB ×
//! 1 recipient — sessions 1, 10, 100, 1,000; message size 100 KiB and 10 MiB;
//! recipients per message 10 and 100 — through our relay and Postfix, one run of each
//! per shape, who goes first alternating, driven by our generator (which times every
//! end of DATA → 250).
//!
//! Message counts follow one base count (`--scaling-messages`, 5,000 by default) so the
//! whole run stays short on a small machine: a fifth of it for one session, up to a
//! byte budget of base × 100 KiB for large messages, and a tenth of it for 100
//! recipients. The counts used are printed with the table.
//!
//! Not here: starting the systems and measuring one run (`run_system` in `main`).

use crate::args::Args;
use crate::report::{order, print_run};
use crate::rounds::{Driver, Run, Shape, System, run_system};
use crate::sink::Sink;

/// The base shape every axis starts from.
const BASE_SESSIONS: usize = 20;
const BASE_SIZE: usize = 1024;
const BASE_RECIPIENTS: usize = 1;

/// One shape of the table and what it measured.
pub struct Row {
    pub axis: &'static str,
    pub value: String,
    pub shape: Shape,
    pub ours: Run,
    pub postfix: Option<Run>,
}

/// The shapes of the table, with message counts derived from `base` messages.
pub fn shapes(base: usize) -> Vec<(&'static str, String, Shape)> {
    let shape = |sessions: usize, messages: usize, size: usize, recipients: usize| Shape {
        sessions,
        messages: messages.max(1),
        size,
        recipients,
        per_connection: 100,
        driver: Driver::Ours,
    };
    let byte_budget = base * 100 * 1024;
    let by_size = |size: usize| base.min(byte_budget / size).max(2);
    vec![
        (
            "base",
            "20 sessions × 1 KiB × 1 recipient".to_string(),
            shape(BASE_SESSIONS, base, BASE_SIZE, BASE_RECIPIENTS),
        ),
        (
            "sessions",
            "1".into(),
            shape(1, base / 5, BASE_SIZE, BASE_RECIPIENTS),
        ),
        (
            "sessions",
            "10".into(),
            shape(10, base * 3 / 5, BASE_SIZE, BASE_RECIPIENTS),
        ),
        (
            "sessions",
            "100".into(),
            shape(100, base, BASE_SIZE, BASE_RECIPIENTS),
        ),
        (
            "sessions",
            "1,000".into(),
            shape(1000, base * 2, BASE_SIZE, BASE_RECIPIENTS),
        ),
        (
            "message size",
            "100 KiB".into(),
            shape(
                BASE_SESSIONS,
                by_size(100 * 1024),
                100 * 1024,
                BASE_RECIPIENTS,
            ),
        ),
        (
            "message size",
            "10 MiB".into(),
            shape(
                BASE_SESSIONS,
                by_size(10 * 1024 * 1024),
                10 * 1024 * 1024,
                BASE_RECIPIENTS,
            ),
        ),
        (
            "recipients",
            "10".into(),
            shape(BASE_SESSIONS, base, BASE_SIZE, 10),
        ),
        (
            "recipients",
            "100".into(),
            shape(BASE_SESSIONS, base / 10, BASE_SIZE, 100),
        ),
    ]
}

/// Runs every shape through our relay and (unless `--no-postfix`) Postfix.
pub async fn run(args: &Args, sink: &Sink) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let all = shapes(args.scaling_messages);
    eprintln!(
        "scaling: {} shapes, messages per shape: {}",
        all.len(),
        all.iter()
            .map(|(axis, value, s)| format!("{axis} {value}: {}", s.messages))
            .collect::<Vec<_>>()
            .join("; ")
    );
    for (i, (axis, value, shape)) in all.into_iter().enumerate() {
        let mut ours = None;
        let mut postfix = None;
        for system in order(args.postfix, i + 1) {
            let run = run_system(system, &shape, args, sink).await?;
            eprint!("{axis} {value}: ");
            print_run(system.name(), shape.driver, i + 1, &run);
            match system {
                System::Ours => ours = Some(run),
                System::Postfix => postfix = Some(run),
            }
        }
        let Some(ours) = ours else {
            return Err(format!("{axis} {value}: our relay did not run"));
        };
        rows.push(Row {
            axis,
            value,
            shape,
            ours,
            postfix,
        });
    }
    Ok(rows)
}

fn cells(o: f64, p: Option<f64>, digits: usize) -> String {
    match p {
        Some(p) => format!("{o:.digits$} | {p:.digits$} | {:.2}", o / p),
        None => format!("{o:.digits$} | – | –"),
    }
}

/// One Markdown table: per shape, throughput, recipients per second, p99 end of DATA →
/// 250 and CPU per 1,000 messages, ours next to Postfix with the ratio.
pub fn print_table(rows: &[Row], postfix: bool) {
    println!();
    println!(
        "### Scaling: one axis at a time from {BASE_SESSIONS} sessions × 1 KiB × 1 recipient; one run per shape and system{}",
        if postfix { "" } else { " (Postfix not run)" }
    );
    println!();
    println!(
        "| axis | value | messages | msgs/s ours | msgs/s Postfix | ratio | rcpts/s ours | rcpts/s Postfix | ratio | p99 DATA→250 ms ours | Postfix | ratio | CPU s/1,000 msgs ours | Postfix | ratio | at the sink ours / Postfix |"
    );
    println!(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for row in rows {
        let pick = |f: fn(&Run) -> f64| (f(&row.ours), row.postfix.as_ref().map(f));
        let (o, p) = pick(|r| r.e2e_rate);
        let rcpts = row.shape.recipients as f64;
        let (p99o, p99p) = pick(|r| r.p99_ms);
        let (cpuo, cpup) = pick(|r| r.cpu_per_1000);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            row.axis,
            row.value,
            row.shape.messages,
            cells(o, p, 0),
            cells(o * rcpts, p.map(|p| p * rcpts), 0),
            cells(p99o, p99p, 2),
            cells(cpuo, cpup, 3),
            row.ours.delivered,
            row.postfix
                .as_ref()
                .map(|r| r.delivered.to_string())
                .unwrap_or_else(|| "–".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_axis_moves_alone_from_the_base_and_big_messages_fit_the_byte_budget() {
        let all = shapes(5000);
        assert_eq!(all.len(), 9);
        for (axis, value, s) in &all {
            let moved = [
                s.sessions != BASE_SESSIONS,
                s.size != BASE_SIZE,
                s.recipients != BASE_RECIPIENTS,
            ];
            assert!(moved.iter().filter(|&&m| m).count() <= 1, "{axis} {value}");
            assert!(s.recipients <= 100, "our relay accepts 100 recipients");
        }
        let ten_mib = all.iter().find(|(_, v, _)| v == "10 MiB").map(|(.., s)| *s);
        assert_eq!(ten_mib.map(|s| s.messages), Some(48));
        let one = all.iter().find(|(a, v, _)| *a == "sessions" && v == "1");
        assert_eq!(one.map(|(.., s)| s.messages), Some(1000));
        assert!(shapes(1).iter().all(|(.., s)| s.messages >= 1));
    }
}

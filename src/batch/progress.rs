//! `Progress`: how a long `eddy train` or `eddy eval` shows itself on
//! stderr: a bar with rows/s and ETA (by bytes read) on a terminal, a
//! plain line every few seconds otherwise (logs, CI).

use std::io::{IsTerminal, Stderr, Write};
use std::time::{Duration, Instant};

/// How often a plain progress line is written.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

pub struct Progress<W: Write = Stderr> {
    started: Instant,
    last: Instant,
    bar: Option<indicatif::ProgressBar>,
    /// Where plain lines go when there is no bar, and how often.
    plain: W,
    every: Duration,
}

impl Progress {
    /// `total`: the inputs' bytes per pass, when known (not stdin).
    pub fn new(total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(t) => indicatif::ProgressBar::new(t).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ETA {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                ),
                None => indicatif::ProgressBar::new_spinner(),
            };
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            ..Progress::plain(std::io::stderr(), PLAIN_EVERY)
        }
    }
}

impl<W: Write> Progress<W> {
    /// Plain lines only, to `out`, at most one per `every`.
    pub fn plain(out: W, every: Duration) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            bar: None,
            plain: out,
            every,
        }
    }

    pub fn tick(&mut self, what: &str, rows: u64, bytes: u64) {
        let rate = rows as f64 / self.last_pass_seconds();
        match &self.bar {
            Some(bar) => {
                bar.set_prefix(what.to_owned());
                bar.set_position(bytes);
                bar.set_message(format!("{rows} rows, {rate:.0} rows/s"));
            }
            None if self.last.elapsed() >= self.every => {
                self.last = Instant::now();
                // Progress is a courtesy: a closed stderr must not stop
                // the run.
                let _ = writeln!(self.plain, "{what}: {rows} rows, {rate:.0} rows/s");
            }
            None => {}
        }
    }

    /// A new pass over the data starts (an epoch).
    pub fn restart(&mut self) {
        self.started = Instant::now();
        if let Some(bar) = &self.bar {
            bar.reset();
        }
    }

    fn last_pass_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_name_the_pass_the_rows_and_the_rate_at_most_once_per_interval() {
        let mut every_time = Progress::plain(Vec::new(), Duration::ZERO);
        every_time.tick("epoch 1", 4096, 100);
        every_time.restart();
        every_time.tick("epoch 2", 8192, 200);
        let text = String::from_utf8(every_time.plain).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("epoch 1: 4096 rows, "), "{text}");
        assert!(lines[1].starts_with("epoch 2: 8192 rows, "), "{text}");
        assert!(lines.iter().all(|l| l.ends_with(" rows/s")), "{text}");

        // Within the interval, ticks write nothing.
        let mut rarely = Progress::plain(Vec::new(), Duration::from_secs(3600));
        rarely.tick("eval", 4096, 100);
        rarely.tick("eval", 8192, 200);
        assert!(rarely.plain.is_empty());
    }
}

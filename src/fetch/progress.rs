//! What a fetch shows: progress bars while it runs (on a terminal, not with
//! `-q`), and the summary table of what it fetched from where.

use std::fmt::Write as _;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Fetched, Origin};

/// One bar per artifact in flight, over a bar of the artifacts done.
#[derive(Clone)]
pub(super) struct Progress {
    bars: MultiProgress,
    total: ProgressBar,
}

impl Progress {
    /// Bars for `count` artifacts, drawn only when `show` and on a terminal.
    pub(super) fn new(show: bool, count: usize) -> Progress {
        let bars = if show && std::io::stderr().is_terminal() {
            MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        };
        let total = bars.add(ProgressBar::new(count as u64));
        total.set_style(style("{prefix:>12} [{bar:30}] {pos}/{len} artifacts"));
        total.set_prefix("fetch");
        Progress { bars, total }
    }

    /// The bar of one artifact's bytes.
    pub(super) fn artifact(&self, name: &str) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new(0));
        bar.set_style(style(
            "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ));
        bar.set_prefix(name.to_string());
        bar
    }

    /// Clears an artifact's bar and counts it done.
    pub(super) fn done(&self, bar: &ProgressBar) {
        bar.finish_and_clear();
        self.total.inc(1);
    }

    pub(super) fn finish(&self) {
        self.total.finish_and_clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The summary table: artifact, version, arch, size, where from.
pub(crate) fn summary(fetched: &[Fetched]) -> String {
    let w = fetched
        .iter()
        .map(|f| f.pin.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut out = format!(
        "{:w$}  {:10}  {:5}  {:>10}  SOURCE\n",
        "ARTIFACT", "VERSION", "ARCH", "SIZE"
    );
    for f in fetched {
        let origin = match &f.origin {
            Origin::Cached => "cached".to_string(),
            Origin::Downloaded(u) => format!("downloaded {u}"),
            Origin::Mirror(u) => format!("mirror {u}"),
        };
        let _ = writeln!(
            out,
            "{:w$}  {:10}  {:5}  {:>10}  {origin}",
            f.pin.name,
            f.pin.version,
            f.pin.arch,
            human(f.size)
        );
    }
    out
}

fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

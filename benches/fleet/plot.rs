//! The rolling-restart plot, `docs/img/rolling-restart.svg`, written by hand: two panels over
//! one time axis (calls completed per second; calls failed per bucket), one line per run, the
//! restart moments as dashed vertical lines.

use std::fmt::Write as _;

use crate::restart::{Roll, BUCKET_MS};

const WIDTH: f64 = 800.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
/// Line colours of the runs, in order.
const COLOURS: [&str; 2] = ["#d62728", "#1f77b4"];

/// A panel: a rectangle of the picture mapping (seconds, value) to pixels.
struct Panel {
    top: f64,
    height: f64,
    xmax: f64,
    ymax: f64,
}

impl Panel {
    fn x(&self, secs: f64) -> f64 {
        LEFT + secs / self.xmax * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        self.top + self.height - v / self.ymax * self.height
    }

    /// Horizontal grid lines with their values, the frame and the panel's title.
    fn axes(&self, s: &mut String, title: &str) {
        let step = nice_step(self.ymax);
        let mut v = 0.0;
        while v <= self.ymax + step * 1e-9 {
            let y = self.y(v);
            let _ = writeln!(
                s,
                "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                WIDTH - RIGHT,
                LEFT - 4.0,
                y + 4.0,
                v
            );
            v += step;
        }
        let _ = writeln!(
            s,
            "<rect x=\"{LEFT}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" \
             stroke=\"#888\"/>\n<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"12\">{title}</text>",
            self.top,
            WIDTH - LEFT - RIGHT,
            self.height,
            self.top - 6.0
        );
    }

    /// A line through `(seconds, value)` points.
    fn polyline(&self, s: &mut String, points: &[(f64, f64)], colour: &str) {
        let pts: Vec<String> = points
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", self.x(t), self.y(v.min(self.ymax))))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            pts.join(" ")
        );
    }

    /// A dashed vertical line at `secs`.
    fn mark(&self, s: &mut String, secs: f64, colour: &str) {
        let x = self.x(secs);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" \
             stroke-dasharray=\"4 3\" opacity=\"0.7\"/>",
            self.top,
            self.top + self.height
        );
    }
}

/// A grid step of 1, 2 or 5 times a power of ten giving at most about 5 lines up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1.0);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * p)
}

/// The top of a scale holding `max` with some room.
fn scale_top(max: f64) -> f64 {
    let step = nice_step(max * 1.1);
    ((max * 1.1 / step).ceil() * step).max(step)
}

/// The SVG of the runs (at most two).
pub fn svg(rolls: &[Roll]) -> String {
    let bucket = BUCKET_MS as f64 / 1000.0;
    let xmax = rolls.iter().map(|r| r.ok.len()).max().unwrap_or(1) as f64 * bucket;
    let per_sec = |r: &Roll| -> Vec<(f64, f64)> {
        r.ok.iter()
            .enumerate()
            .map(|(i, &n)| ((i as f64 + 0.5) * bucket, n as f64 / bucket))
            .collect()
    };
    let failed = |r: &Roll| -> Vec<(f64, f64)> {
        r.failed
            .iter()
            .enumerate()
            .map(|(i, &n)| ((i as f64 + 0.5) * bucket, n as f64))
            .collect()
    };
    let max_of = |f: &dyn Fn(&Roll) -> Vec<(f64, f64)>| {
        rolls
            .iter()
            .flat_map(|r| f(r).into_iter().map(|p| p.1))
            .fold(0.0, f64::max)
    };
    let top = Panel {
        top: 60.0,
        height: 220.0,
        xmax,
        ymax: scale_top(max_of(&per_sec)),
    };
    let bottom = Panel {
        top: 320.0,
        height: 120.0,
        xmax,
        ymax: scale_top(max_of(&failed).max(1.0)),
    };
    let height = bottom.top + bottom.height + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"13\">Rolling restart of three backends: \
         nginx, round_robin, {} calls in flight; dashed: a backend killed and started \
         again</text>",
        rolls.first().map_or(0, |r| r.in_flight)
    );
    top.axes(&mut s, "calls completed per second (per 100 ms bucket)");
    bottom.axes(&mut s, "calls failed per 100 ms bucket");
    for (k, r) in rolls.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        for m in &r.restarts {
            top.mark(&mut s, m.down, colour);
            bottom.mark(&mut s, m.down, colour);
        }
        top.polyline(&mut s, &per_sec(r), colour);
        bottom.polyline(&mut s, &failed(r), colour);
        // Legend, above the top panel.
        let lx = LEFT + 10.0 + k as f64 * 380.0;
        let _ = writeln!(
            s,
            "<line x1=\"{lx}\" x2=\"{:.1}\" y1=\"38\" y2=\"38\" stroke=\"{colour}\" \
             stroke-width=\"2\"/><text x=\"{:.1}\" y=\"42\">{}: {} ok, {} failed</text>",
            lx + 20.0,
            lx + 26.0,
            r.name,
            r.total_ok(),
            r.total_failed()
        );
    }
    // Which backend each restart was, from the first run.
    if let Some(r) = rolls.first() {
        for m in &r.restarts {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#444\">b{}</text>",
                top.x(m.down) + 3.0,
                top.top + 12.0,
                m.backend
            );
        }
    }
    // The time axis, under the bottom panel.
    let mut t = 0.0;
    while t <= xmax + 1e-9 {
        let x = bottom.x(t);
        let y = bottom.top + bottom.height;
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}</text>",
            y + 4.0,
            y + 16.0
        );
        t += 1.0;
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds since the load \
         started</text>\n</svg>",
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        height - 10.0
    );
    s
}

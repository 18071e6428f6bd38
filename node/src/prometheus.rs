//! Writing the Prometheus text exposition format (version 0.0.4): a metric family is its
//! HELP and TYPE lines followed by its samples, so each family is written in one place.

use std::fmt::{Display, Write as _};

use crate::dataplane::stats::Histogram;

/// The content type of the text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A page of metrics being written.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts the family `name` of type `kind` (`counter`, `gauge`, `histogram`).
    pub(crate) fn family(&mut self, name: &'static str, kind: &str, help: &str) -> Family<'_> {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out: &mut self.out, name }
    }

    /// The page.
    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// One family's samples.
#[derive(Debug)]
pub(crate) struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    /// One sample; `labels` is `key="value",...`, or empty for none.
    pub(crate) fn sample(&mut self, labels: &str, value: impl Display) -> &mut Self {
        let name = self.name;
        let _ = match labels.is_empty() {
            true => writeln!(self.out, "{name} {value}"),
            false => writeln!(self.out, "{name}{{{labels}}} {value}"),
        };
        self
    }

    /// One sample per labelled object, as `value` reads it.
    pub(crate) fn each<T, V: Display>(&mut self, objects: &[(String, T)], value: impl Fn(&T) -> V) {
        for (labels, object) in objects {
            self.sample(labels, value(object));
        }
    }

    /// A histogram's cumulative buckets, sum and count.
    pub(crate) fn histogram(&mut self, labels: &str, histogram: &Histogram) -> &mut Self {
        let name = self.name;
        let (buckets, sum) = histogram.cumulative();
        let count = buckets.last().map_or(0, |(_, count)| *count);
        for (bound, cumulative) in buckets {
            let bound = bound.map_or("+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(self.out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(self.out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(self.out, "{name}_count{{{labels}}} {count}");
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut page = Exposition::default();
        page.family("x", "histogram", "help").histogram("a=\"b\"", &h);
        let out = page.finish();
        assert!(out.starts_with("# HELP x help\n# TYPE x histogram\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn a_sample_without_labels_has_no_braces() {
        let mut page = Exposition::default();
        page.family("up", "gauge", "Up.").sample("", 1).sample("node=\"2\"", 0);
        assert_eq!(page.finish(), "# HELP up Up.\n# TYPE up gauge\nup 1\nup{node=\"2\"} 0\n");
    }
}

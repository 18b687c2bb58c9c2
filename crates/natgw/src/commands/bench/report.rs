//! The figures: values per setup and round, medians, ratios, the table and the JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::setups::Setup;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
    /// A cost per unit of work (CPU time per packet): lower is better, and the ratio
    /// columns show it inverted (this setup's work per unit of the other's cost), so
    /// that above 1 means better there too.
    Cheaper,
}

/// What one row of the table measures.
#[derive(Debug, Clone, Copy)]
pub struct FigureSpec {
    pub id: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub better: Better,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupResult {
    pub rounds: Vec<f64>,
    pub median: f64,
    /// In some round the generator could not offer clearly more than arrived: the
    /// figure is a lower bound of what the gateway can do.
    pub generator_limited: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub id: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub better: Better,
    pub results: BTreeMap<&'static str, SetupResult>,
    /// Medians natgw/recipe and natgw/plain (rates; costs inverted: recipe/natgw).
    pub natgw_over_recipe: Option<f64>,
    pub natgw_over_plain: Option<f64>,
    /// Medians ebpf/plain and ebpf/natgw (rates only).
    pub ebpf_over_plain: Option<f64>,
    pub ebpf_over_natgw: Option<f64>,
}

/// Values collected so far, in the order the figures were first measured.
#[derive(Default)]
pub struct Collected {
    order: Vec<FigureSpec>,
    values: BTreeMap<&'static str, BTreeMap<Setup, Vec<f64>>>,
    limited: std::collections::BTreeSet<(&'static str, Setup)>,
}

impl Collected {
    pub fn add(&mut self, spec: FigureSpec, setup: Setup, value: f64) {
        if !self.order.iter().any(|s| s.id == spec.id) {
            self.order.push(spec);
        }
        self.values
            .entry(spec.id)
            .or_default()
            .entry(setup)
            .or_default()
            .push(value);
    }

    /// Marks a figure of a setup as limited by the generator (see `SetupResult`).
    pub fn generator_limited(&mut self, spec: FigureSpec, setup: Setup) {
        self.limited.insert((spec.id, setup));
    }

    pub fn figures(&self) -> Vec<Figure> {
        self.order
            .iter()
            .map(|spec| {
                let results: BTreeMap<&'static str, SetupResult> = self.values[spec.id]
                    .iter()
                    .map(|(setup, rounds)| {
                        (
                            setup.name(),
                            SetupResult {
                                median: median(rounds),
                                rounds: rounds.clone(),
                                generator_limited: self.limited.contains(&(spec.id, *setup)),
                            },
                        )
                    })
                    .collect();
                let ratio = |of: &str, over: &str| {
                    let (this, other) = (results.get(of)?.median, results.get(over)?.median);
                    match spec.better {
                        Better::Higher => (other > 0.0).then(|| this / other),
                        Better::Cheaper => (this > 0.0).then(|| other / this),
                        Better::Lower => None,
                    }
                };
                Figure {
                    id: spec.id,
                    title: spec.title,
                    unit: spec.unit,
                    better: spec.better,
                    natgw_over_recipe: ratio("natgw", "recipe"),
                    natgw_over_plain: ratio("natgw", "plain"),
                    ebpf_over_plain: ratio("ebpf", "plain"),
                    ebpf_over_natgw: ratio("ebpf", "natgw"),
                    results,
                }
            })
            .collect()
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Thousands separated, no decimals above 100; two decimals below.
pub fn number(value: f64) -> String {
    if value.is_nan() {
        return "—".into();
    }
    if value.abs() < 100.0 && value.fract() != 0.0 {
        return format!("{value:.2}");
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// The table: one row per figure (a natgw-pool2 result gets a row of its own, in the
/// natgw column), medians of the rounds and the ratios.
pub fn table(figures: &[Figure]) -> String {
    let mut rows = vec![[
        "figure (median of rounds)".to_string(),
        "plain".into(),
        "recipe".into(),
        "natgw".into(),
        "ebpf".into(),
        "natgw/recipe".into(),
        "natgw/plain".into(),
        "ebpf/plain".into(),
        "ebpf/natgw".into(),
    ]];
    let cell = |f: &Figure, setup: &str| {
        f.results.get(setup).map_or("—".into(), |r| {
            let bound = if r.generator_limited { "≥" } else { "" };
            format!("{bound}{}", number(r.median))
        })
    };
    let ratio = |r: Option<f64>| r.map_or("—".into(), |r| format!("{r:.2}"));
    for f in figures {
        if f.results.keys().any(|s| *s != "natgw-pool2") {
            rows.push([
                format!("{} ({})", f.title, f.unit),
                cell(f, "plain"),
                cell(f, "recipe"),
                cell(f, "natgw"),
                cell(f, "ebpf"),
                ratio(f.natgw_over_recipe),
                ratio(f.natgw_over_plain),
                ratio(f.ebpf_over_plain),
                ratio(f.ebpf_over_natgw),
            ]);
        }
        if f.results.contains_key("natgw-pool2") {
            rows.push([
                format!("{}, pool of two ({})", f.title, f.unit),
                "—".into(),
                "—".into(),
                cell(f, "natgw-pool2"),
                "—".into(),
                "—".into(),
                "—".into(),
                "—".into(),
                "—".into(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = format!("{:<w$}", r[0], w = widths[0]);
            for (c, text) in r.iter().enumerate().skip(1) {
                line.push_str(&format!("  {:>w$}", text, w = widths[c]));
            }
            line.trim_end().to_string() + "\n"
        })
        .collect()
}

/// With --profile: per flood, the share of the gateway's packet-processing samples
/// per stage for each setup, and each setup's busiest functions.
pub fn profiles(
    profiles: &BTreeMap<&'static str, BTreeMap<&'static str, super::profile::Profile>>,
) -> String {
    let mut out = String::new();
    for (flood, by_setup) in profiles {
        let setups: Vec<&&str> = by_setup.keys().collect();
        let mut stages: Vec<&String> = by_setup.values().flat_map(|p| p.stages.keys()).collect();
        stages.sort();
        stages.dedup();
        out.push_str(&format!(
            "\nwhere the gateway's CPU goes during {flood} (share of its packet-processing samples, perf cpu-clock)\n{:<32}",
            "stage"
        ));
        for setup in &setups {
            out.push_str(&format!("{setup:>10}"));
        }
        out.push('\n');
        for stage in stages {
            out.push_str(&format!("{stage:<32}"));
            for setup in &setups {
                let share = by_setup[**setup].stages.get(stage).copied().unwrap_or(0.0);
                out.push_str(&format!("{:>9.1}%", share));
            }
            out.push('\n');
        }
        out.push_str(&format!("{:<32}", "packet-processing samples"));
        for setup in &setups {
            out.push_str(&format!("{:>10}", by_setup[**setup].packet_samples));
        }
        out.push('\n');
        for (setup, profile) in by_setup {
            let top: Vec<String> = profile
                .top
                .iter()
                .take(6)
                .map(|(sym, share)| format!("{sym} {share:.1}%"))
                .collect();
            out.push_str(&format!("  busiest in {setup}: {}\n", top.join(", ")));
            if !profile.rules_top.is_empty() {
                let rules: Vec<String> = profile
                    .rules_top
                    .iter()
                    .take(8)
                    .map(|(sym, share)| format!("{sym} {share:.1}%"))
                    .collect();
                out.push_str(&format!("    in {setup}'s rules: {}\n", rules.join(", ")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: FigureSpec = FigureSpec {
        id: "rate",
        title: "rate",
        unit: "/s",
        better: Better::Higher,
    };
    const FAILED: FigureSpec = FigureSpec {
        id: "failed",
        title: "failed",
        unit: "count",
        better: Better::Lower,
    };

    #[test]
    fn medians_of_odd_and_even_rounds() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn numbers_read_like_figures() {
        assert_eq!(number(1_234_567.4), "1,234,567");
        assert_eq!(number(999.0), "999");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(12.345), "12.35");
    }

    #[test]
    fn ratios_for_rates_only_and_pool_results_on_a_row_of_their_own() {
        let mut c = Collected::default();
        for (setup, v) in [
            (Setup::Plain, 200.0),
            (Setup::Recipe, 100.0),
            (Setup::Natgw, 90.0),
            (Setup::Ebpf, 180.0),
        ] {
            c.add(RATE, setup, v);
            c.add(FAILED, setup, 0.0);
        }
        c.add(FAILED, Setup::NatgwPool2, 0.0);
        c.generator_limited(RATE, Setup::Plain);
        let figures = c.figures();
        assert_eq!(figures[0].natgw_over_recipe, Some(0.9));
        assert_eq!(figures[0].natgw_over_plain, Some(0.45));
        assert_eq!(figures[0].ebpf_over_plain, Some(0.9));
        assert_eq!(figures[0].ebpf_over_natgw, Some(2.0));
        assert_eq!(figures[1].natgw_over_recipe, None);
        let table = table(&figures);
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(table.contains("failed, pool of two (count)"), "{table}");
        assert!(table.contains("≥200"), "{table}");
    }
}

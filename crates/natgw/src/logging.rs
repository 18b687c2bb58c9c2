//! Where natgw's log events go, and how many of them.
//!
//! - Human lines on stderr by default (`natgw: applied: ...`), JSON lines with
//!   `--log-format json`, the journal when systemd started natgw and no format was
//!   asked for (stderr if the journal cannot be reached).
//! - Read commands log warnings only, so their output stays what they print; commands
//!   that change the system log each change (info). `-v` raises the level per use,
//!   `NATGW_LOG` (EnvFilter syntax) replaces the whole filter.
//! - A command's final error is one human line on stderr, and an event too where logs
//!   are structured (JSON, journal), so log collectors see why natgw stopped.

use std::io::IsTerminal;

use anyhow::Context;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::cli::LogFormat;
use crate::exit::{self, Failure};

/// The variable that overrides the filter, in `tracing_subscriber::EnvFilter` syntax.
pub const FILTER_VAR: &str = "NATGW_LOG";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Stderr(LogFormat),
    Journal,
}

/// The logging in force, kept by `main` to report the command's final error.
pub struct Logging {
    sink: Sink,
}

/// Sets up the global subscriber. Fails only on an invalid `NATGW_LOG`.
pub fn init(
    format: Option<LogFormat>,
    changes_system: bool,
    verbose: u8,
) -> anyhow::Result<Logging> {
    let filter = match std::env::var(FILTER_VAR) {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::builder().parse(&spec).with_context(|| {
            format!("{FILTER_VAR}={spec:?} is not a log filter (e.g. {FILTER_VAR}=debug or {FILTER_VAR}=natgw_linux=trace)")
        })?,
        _ => EnvFilter::new(directives(changes_system, verbose)),
    };
    let mut sink = choose(format, |name| std::env::var(name).ok());
    let mut journal_error = None;
    let layer = match sink {
        Sink::Stderr(format) => {
            stderr_layer(format, std::io::stderr, std::io::stderr().is_terminal())
        }
        Sink::Journal => match tracing_journald::layer() {
            Ok(journal) => journal.with_syslog_identifier("natgw".into()).boxed(),
            Err(e) => {
                journal_error = Some(e);
                sink = Sink::Stderr(LogFormat::Human);
                stderr_layer(
                    LogFormat::Human,
                    std::io::stderr,
                    std::io::stderr().is_terminal(),
                )
            }
        },
    };
    // Only fails when a subscriber is already set, which main never does twice.
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
    if let Some(e) = journal_error {
        tracing::debug!(error = %e, "the journal is not reachable; logging to stderr");
    }
    Ok(Logging { sink })
}

impl Logging {
    /// Reports why the command stopped: `natgw: error: ...` with the whole cause chain
    /// on one line, and as an event (exit code, outcome) where logs are structured.
    pub fn report(&self, failure: &Failure) {
        let error = format!("{:#}", failure.error);
        let outcome = if failure.code == exit::USAGE {
            "refused"
        } else {
            "failed"
        };
        let structured =
            self.sink != Sink::Stderr(LogFormat::Human) && tracing::enabled!(Level::ERROR);
        if structured {
            tracing::error!(exit_code = failure.code, outcome, "{error}");
        }
        // JSON on stderr must stay one object per line; under systemd stderr usually is
        // the journal already, and the event just went there.
        let plain_line = match self.sink {
            Sink::Stderr(LogFormat::Human) => true,
            Sink::Stderr(LogFormat::Json) => !structured,
            Sink::Journal => !structured || !stderr_is_journal(),
        };
        if plain_line {
            eprintln!("natgw: error: {error}");
        }
    }
}

/// The default filter: warnings from everything, and natgw's own crates at the level
/// of the command raised by `-v`. The target `natgw` also matches `natgw_core`,
/// `natgw_linux`, ...: EnvFilter targets are prefixes.
fn directives(changes_system: bool, verbose: u8) -> String {
    const LEVELS: [Level; 5] = [
        Level::ERROR,
        Level::WARN,
        Level::INFO,
        Level::DEBUG,
        Level::TRACE,
    ];
    let base = if changes_system { 2 } else { 1 };
    let level = LEVELS[(base + usize::from(verbose)).min(LEVELS.len() - 1)];
    format!("warn,natgw={}", level.as_str().to_lowercase())
}

/// An explicit `--log-format` always means stderr; without one, the journal when
/// systemd started natgw (it sets these for every service it runs).
fn choose(format: Option<LogFormat>, env: impl Fn(&str) -> Option<String>) -> Sink {
    if let Some(format) = format {
        return Sink::Stderr(format);
    }
    let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    if set("JOURNAL_STREAM") || set("INVOCATION_ID") {
        Sink::Journal
    } else {
        Sink::Stderr(LogFormat::Human)
    }
}

/// True when stderr is the stream systemd connected to the journal: `JOURNAL_STREAM`
/// holds its `device:inode` (systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    stream == format!("{}:{}", stat.st_dev, stat.st_ino)
}

fn stderr_layer<W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => layer.event_format(Human).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    }
}

/// `natgw: applied: set sysctl ...`, `natgw: warning: ...`: the message, then any
/// other fields as `key=value`. Info carries no level word: it is the normal case.
struct Human;

impl<S, N> FormatEvent<S, N> for Human
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "natgw: ")?;
        match *event.metadata().level() {
            Level::INFO => {}
            Level::WARN => write!(writer, "warning: ")?,
            level => write!(writer, "{}: ", level.as_str().to_lowercase())?,
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn read_commands_log_warnings_and_changes_log_info_raised_by_verbose() {
        assert_eq!(directives(false, 0), "warn,natgw=warn");
        assert_eq!(directives(true, 0), "warn,natgw=info");
        assert_eq!(directives(false, 1), "warn,natgw=info");
        assert_eq!(directives(true, 1), "warn,natgw=debug");
        assert_eq!(directives(true, 9), "warn,natgw=trace");
    }

    #[test]
    fn journal_only_under_systemd_and_never_over_an_explicit_format() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(choose(None, env(&[])), Sink::Stderr(LogFormat::Human));
        assert_eq!(
            choose(None, env(&[("INVOCATION_ID", "")])),
            Sink::Stderr(LogFormat::Human)
        );
        assert_eq!(
            choose(None, env(&[("INVOCATION_ID", "4f2a")])),
            Sink::Journal
        );
        assert_eq!(
            choose(None, env(&[("JOURNAL_STREAM", "8:1234")])),
            Sink::Journal
        );
        assert_eq!(
            choose(Some(LogFormat::Json), env(&[("JOURNAL_STREAM", "8:1234")])),
            Sink::Stderr(LogFormat::Json)
        );
    }

    /// Events through a layer made like `init` makes it, captured as text.
    fn capture(format: LogFormat, emit: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = stderr_layer(format, move || writer.clone(), false)
            .with_filter(EnvFilter::new(directives(true, 0)));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn human_lines_read_like_natgw_messages() {
        let text = capture(LogFormat::Human, || {
            tracing::info!("applied: set sysctl net.ipv4.ip_forward: 0 -> 1");
            tracing::warn!(table = "inet natgw", "drift: the table was edited");
            tracing::debug!("not shown at the default level");
        });
        assert_eq!(
            text,
            "natgw: applied: set sysctl net.ipv4.ip_forward: 0 -> 1\n\
             natgw: warning: drift: the table was edited table=\"inet natgw\"\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_each_with_level_message_and_fields() {
        let text = capture(LogFormat::Json, || {
            tracing::info!(change = "set sysctl", "applied");
            tracing::error!(
                exit_code = 2,
                outcome = "refused",
                "bad \"input\"\nsecond line"
            );
        });
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["message"], "applied");
        assert_eq!(lines[0]["change"], "set sysctl");
        assert_eq!(lines[1]["exit_code"], 2);
        assert_eq!(lines[1]["message"], "bad \"input\"\nsecond line");
    }
}

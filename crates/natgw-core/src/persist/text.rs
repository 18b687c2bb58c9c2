//! A configuration file as lines, remembering how it ends its lines (LF or CRLF) and
//! whether it ends with one, so that an edit changes only the lines it means to.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    pub lines: Vec<String>,
    crlf: bool,
    final_newline: bool,
}

impl Text {
    pub fn parse(text: &str) -> Text {
        let crlf = text.contains("\r\n");
        let final_newline = text.is_empty() || text.ends_with('\n');
        let lines = text
            .lines()
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
            .collect();
        Text {
            lines,
            crlf,
            final_newline,
        }
    }

    /// The file's text, with its line endings and (lack of a) final newline.
    pub fn render(&self) -> String {
        let end = if self.crlf { "\r\n" } else { "\n" };
        let mut out = self.lines.join(end);
        if self.final_newline && !self.lines.is_empty() {
            out.push_str(end);
        }
        out
    }
}

/// A line's first whitespace-separated word and the rest (spaces and tabs alike, as
/// every parser here treats them).
pub fn first_word(line: &str) -> (&str, &str) {
    let line = line.trim_start();
    match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim_start()),
        None => (line, ""),
    }
}

/// `key=value` of an INI-style line (keyfiles, .network, ifcfg), both trimmed.
pub fn key_value(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    if line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
        return None;
    }
    line.split_once('=').map(|(k, v)| (k.trim(), v.trim()))
}

/// The `[Section]` a line opens, if it does.
pub fn section(line: &str) -> Option<&str> {
    let line = line.trim();
    line.strip_prefix('[')?.strip_suffix(']').map(str::trim)
}

/// Leading whitespace of a line.
pub fn indent(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_crlf_and_a_missing_final_newline() {
        for text in ["a\r\nb\r\n", "a\nb", "a\nb\n", ""] {
            assert_eq!(Text::parse(text).render(), text);
        }
        let mut t = Text::parse("a\r\n");
        t.lines.push("b".into());
        assert_eq!(t.render(), "a\r\nb\r\n");
    }

    #[test]
    fn words_split_on_tabs_too() {
        assert_eq!(first_word("\tgateway\t10.0.0.1 "), ("gateway", "10.0.0.1 "));
        assert_eq!(first_word("auto"), ("auto", ""));
    }
}

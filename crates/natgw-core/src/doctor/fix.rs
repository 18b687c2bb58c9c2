//! A fix as an admin pastes it into a shell: every command complete, quoted and on a
//! line of its own; prose on lines of its own as `#` comments. Pasting a whole fix runs
//! exactly its commands, and a value natgw cannot know (an upstream router, say) stays
//! in the prose rather than becoming a command that fails half-way.

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fix {
    lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Say(String),
    Run(String),
}

impl Fix {
    /// A command given as words; each is quoted for the shell as needed.
    pub fn run<S: AsRef<str>>(words: &[S]) -> Fix {
        Fix::default().then_run(words)
    }

    /// A command already written for the shell (pipes, `&&`, quoting done by the caller).
    pub fn shell(command: impl Into<String>) -> Fix {
        Fix::default().then_shell(command)
    }

    /// Prose: why, what else could be done, values only the admin knows.
    pub fn say(prose: impl AsRef<str>) -> Fix {
        Fix::default().then_say(prose)
    }

    pub fn then_run<S: AsRef<str>>(self, words: &[S]) -> Fix {
        let command: Vec<Cow<str>> = words.iter().map(|w| shell_word(w.as_ref())).collect();
        self.then_shell(command.join(" "))
    }

    pub fn then_shell(mut self, command: impl Into<String>) -> Fix {
        let command = command.into();
        debug_assert!(!command.contains('\n'), "one command per line: {command}");
        self.lines.push(Line::Run(command));
        self
    }

    pub fn then_say(mut self, prose: impl AsRef<str>) -> Fix {
        self.lines.extend(
            prose
                .as_ref()
                .lines()
                .map(|l| Line::Say(l.trim().to_string())),
        );
        self
    }

    /// This fix, followed by another.
    pub fn then(mut self, next: Fix) -> Fix {
        self.lines.extend(next.lines);
        self
    }

    /// The commands, in order, without the prose.
    pub fn commands(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|l| match l {
            Line::Run(c) => Some(c.as_str()),
            Line::Say(_) => None,
        })
    }
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match line {
                Line::Say(prose) => write!(f, "# {prose}")?,
                Line::Run(command) => f.write_str(command)?,
            }
        }
        Ok(())
    }
}

impl From<Fix> for String {
    fn from(fix: Fix) -> String {
        fix.to_string()
    }
}

/// One shell word, quoted only when it must be (interface names may hold `$`, `;`, `'`).
pub fn shell_word(word: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.,:/=@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', "'\\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_and_commands_are_separate_lines() {
        let fix = Fix::say("why it matters\nand what else to do")
            .then_run(&["ip", "link", "set", "eth0", "up"])
            .then_say("then check again");
        assert_eq!(
            fix.to_string(),
            "# why it matters\n# and what else to do\nip link set eth0 up\n# then check again"
        );
        assert_eq!(fix.commands().collect::<Vec<_>>(), ["ip link set eth0 up"]);
    }

    #[test]
    fn hostile_words_stay_one_word() {
        let fix = Fix::run(&["ip", "link", "set", "a;b$(x)'c", "up"]);
        assert_eq!(fix.to_string(), r#"ip link set 'a;b$(x)'\''c' up"#);
        assert_eq!(shell_word(""), "''");
        assert_eq!(
            shell_word("net/ipv4/conf/eth0.100/rp_filter=2"),
            "net/ipv4/conf/eth0.100/rp_filter=2"
        );
    }
}

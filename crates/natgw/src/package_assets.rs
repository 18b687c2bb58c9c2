//! `natgw package-assets --out DIR` (hidden): what the Debian package ships besides
//! the binary, generated from the real clap `Cli` so it never drifts from the code:
//! man pages (natgw(8) and one per subcommand, e.g. natgw-up(8)), shell completions
//! for bash, zsh and fish, and the example config.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// natgw administers the system's network: section 8.
const SECTION: &str = "8";

/// Extra sections of natgw(8), in roff.
const FILES_SECTION: &str = r#".SH FILES
.TP
\fI/etc/natgw/natgw.toml\fR
The configuration. Settings that are commented out are detected at each start;
remove the \fB#\fR in front of a key to pin its value.
.TP
\fI/run/natgw/\fR
What natgw changed, per network namespace, so that \fBnatgw down\fR can undo it
(root only; gone after a reboot, like the kernel state it describes).
.TP
\fI/usr/lib/systemd/system/natgw.service\fR
The service that runs \fBnatgw run\fR at boot.
.SH EXIT STATUS
0 success; 1 a problem was found or an operation failed; 2 usage or configuration
error (nothing was changed).
"#;

pub fn write(out: &Path, date: Option<&str>) -> anyhow::Result<()> {
    let mut cli = Cli::command();
    cli.build();
    let man = out.join("man");
    create_dir(&man)?;
    write_man_pages(&cli, &man, date.unwrap_or_default())?;

    let completions = out.join("completions");
    create_dir(&completions)?;
    for (shell, name) in [
        (Shell::Bash, "natgw"),
        (Shell::Zsh, "_natgw"),
        (Shell::Fish, "natgw.fish"),
    ] {
        write_file(&completions.join(name), &completion(shell))?;
    }

    let example = natgw_core::config_template::example(None);
    write_file(&out.join("natgw.toml"), example.as_bytes())
}

/// The completion script for `shell`, without hidden subcommands (clap_complete
/// completes them too; clap cannot remove a subcommand, so the root is rebuilt with
/// the same flags and the visible subcommands).
fn completion(shell: Shell) -> Vec<u8> {
    let cli = Cli::command();
    let mut visible = clap::Command::new("natgw")
        .version(env!("CARGO_PKG_VERSION"))
        .about(cli.get_about().cloned().unwrap_or_default())
        .subcommand_required(true)
        .args(cli.get_arguments().cloned())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut visible, "natgw", &mut text);
    text
}

/// One page per command, recursively: natgw.8, natgw-up.8, natgw-node-up.8, ...
fn write_man_pages(cmd: &clap::Command, dir: &Path, date: &str) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section(SECTION)
        .date(date)
        .source(concat!("natgw ", env!("CARGO_PKG_VERSION")))
        .manual("natgw manual");
    let mut page = Vec::new();
    man.render(&mut page)
        .with_context(|| format!("cannot render {}", man.get_filename()))?;
    if cmd.get_display_name().is_none() || cmd.get_display_name() == Some("natgw") {
        page.extend_from_slice(FILES_SECTION.as_bytes());
    }
    write_file(&dir.join(man.get_filename()), &page)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_man_pages(sub, dir, date)?;
    }
    Ok(())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn write_file(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_offer_every_visible_subcommand_and_no_hidden_one() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(completion(shell)).unwrap();
            for sub in Cli::command().get_subcommands() {
                let name = sub.get_name();
                assert_eq!(text.contains(name), !sub.is_hide_set(), "{shell}: {name}");
            }
            assert!(
                text.contains("dry-run") && text.contains("log-format"),
                "{shell}"
            );
        }
    }

    #[test]
    fn one_man_page_per_command_in_section_8_with_files_in_natgw_8() {
        let out = std::env::temp_dir().join(format!("natgw-assets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        write(&out, Some("2026-01-02")).unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(out.join("man"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        for expected in [
            "natgw.8",
            "natgw-up.8",
            "natgw-install.8",
            "natgw-node-up.8",
        ] {
            assert!(
                pages.iter().any(|p| p == expected),
                "{expected} in {pages:?}"
            );
        }
        assert!(!pages
            .iter()
            .any(|p| p.contains("package-assets") || p.contains("help")));
        let main = std::fs::read_to_string(out.join("man/natgw.8")).unwrap();
        assert!(main.starts_with(".ie"), "roff: {}", &main[..40]);
        let th = concat!(
            ".TH natgw 8 2026-01-02 \"natgw ",
            env!("CARGO_PKG_VERSION"),
            "\""
        );
        assert!(main.contains(th), "{th}");
        assert!(main.contains(".SH FILES"));
        let up = std::fs::read_to_string(out.join("man/natgw-up.8")).unwrap();
        assert!(up.contains(".TH natgw-up 8 2026-01-02 ") && !up.contains(".SH FILES"));
        let example = std::fs::read_to_string(out.join("natgw.toml")).unwrap();
        assert_eq!(example, natgw_core::config_template::example(None));
        let _ = std::fs::remove_dir_all(&out);
    }
}

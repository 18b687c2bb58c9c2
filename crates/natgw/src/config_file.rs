//! Reading the config file without trusting the path: a regular file only, at most
//! `MAX_CONFIG_BYTES`, and never more than that read, whatever the file turns into.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use natgw_core::config::MAX_CONFIG_BYTES;

pub fn read(path: &Path) -> anyhow::Result<String> {
    let shown = path.display();
    // O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .with_context(|| {
            format!("cannot read config file {shown}; check the path given to --config")
        })?;
    // The type of what was opened, not of whatever the path names a moment later.
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read config file {shown}"))?;
    if !meta.is_file() {
        bail!(
            "config file {shown} is {}, not a regular file; give --config the path of a TOML file",
            kind(meta.file_type())
        );
    }
    let too_large = || {
        anyhow!(
            "config file {shown} is larger than the limit of {} MiB ({MAX_CONFIG_BYTES} bytes); check the path given to --config",
            MAX_CONFIG_BYTES >> 20
        )
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    // The file may grow after fstat (and /proc-like files report 0): bound the read itself.
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read config file {shown}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "config file {shown} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn kind(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A directory of its own for each test, removed afterwards.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(test: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("natgw-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn error(path: &Path) -> String {
        format!("{:#}", read(path).unwrap_err())
    }

    #[test]
    fn reads_a_regular_file() {
        let scratch = Scratch::new("config-regular");
        let path = scratch.0.join("natgw.toml");
        std::fs::write(&path, "public = \"wan0\"\n").unwrap();
        assert_eq!(read(&path).unwrap(), "public = \"wan0\"\n");
    }

    #[test]
    fn refuses_dev_zero_without_reading_it() {
        let e = error(Path::new("/dev/zero"));
        assert_eq!(
            e,
            "config file /dev/zero is a character device, not a regular file; give --config the path of a TOML file"
        );
    }

    #[test]
    fn refuses_a_directory_and_a_fifo_without_blocking() {
        let scratch = Scratch::new("config-special");
        assert!(error(&scratch.0).contains("is a directory, not a regular file"));
        let fifo = scratch.0.join("fifo");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        let e = error(&fifo);
        assert!(e.contains(&format!("{} is a FIFO", fifo.display())), "{e}");
    }

    #[test]
    fn refuses_a_file_over_the_limit_and_accepts_one_at_it() {
        let scratch = Scratch::new("config-size");
        let path = scratch.0.join("big.toml");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let e = error(&path);
        assert!(
            e.starts_with(&format!(
                "config file {} is larger than the limit of 4 MiB",
                path.display()
            )),
            "{e}"
        );
        file.set_len(MAX_CONFIG_BYTES).unwrap();
        assert_eq!(read(&path).unwrap().len() as u64, MAX_CONFIG_BYTES);
    }

    #[test]
    fn names_a_missing_file_and_binary_content() {
        assert!(error(Path::new("/nonexistent/natgw.toml"))
            .starts_with("cannot read config file /nonexistent/natgw.toml"));
        let scratch = Scratch::new("config-binary");
        let path = scratch.0.join("binary.toml");
        std::fs::write(&path, b"public = \"\xff\"").unwrap();
        assert!(error(&path).contains("is not UTF-8 text (invalid byte at offset 10)"));
    }
}

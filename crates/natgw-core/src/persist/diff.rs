//! A unified diff without context lines: what `--dry-run` prints. Only changed lines
//! appear, so a secret elsewhere in the file (a keyfile's psk) is never shown.

/// `-U0` unified diff of `before` (none: a new file) and `after`, under `path`.
pub fn unified(path: &str, before: Option<&str>, after: &str) -> String {
    let old: Vec<&str> = before.map_or(Vec::new(), |b| b.lines().collect());
    let new: Vec<&str> = after.lines().collect();
    let mut out = format!(
        "--- {}\n+++ {path}\n",
        if before.is_some() { path } else { "/dev/null" }
    );
    for hunk in hunks(&old, &new) {
        // `-U0` numbering: an empty side names the line before it.
        let range = |start: usize, len: usize| match len {
            0 => format!("{start},0"),
            1 => format!("{}", start + 1),
            n => format!("{},{n}", start + 1),
        };
        out += &format!(
            "@@ -{} +{} @@\n",
            range(hunk.old_start, hunk.removed.len()),
            range(hunk.new_start, hunk.added.len())
        );
        hunk.removed.iter().for_each(|l| out += &format!("-{l}\n"));
        hunk.added.iter().for_each(|l| out += &format!("+{l}\n"));
    }
    out
}

struct Hunk<'a> {
    old_start: usize,
    new_start: usize,
    removed: Vec<&'a str>,
    added: Vec<&'a str>,
}

/// Changed runs between the two line lists, from a longest common subsequence
/// (configuration files are small, so the quadratic table is fine).
fn hunks<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<Hunk<'a>> {
    let (n, m) = (old.len(), new.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut hunks: Vec<Hunk> = Vec::new();
    let mut current: Option<Hunk> = None;
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            hunks.extend(current.take());
            i += 1;
            j += 1;
            continue;
        }
        let hunk = current.get_or_insert_with(|| Hunk {
            old_start: i,
            new_start: j,
            removed: Vec::new(),
            added: Vec::new(),
        });
        if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            hunk.added.push(new[j]);
            j += 1;
        } else {
            hunk.removed.push(old[i]);
            i += 1;
        }
    }
    hunks.extend(current);
    hunks
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn shows_changed_lines_only() {
        let before = "[wifi-security]\npsk=secret\n[ipv4]\ngateway=10.0.0.254\nmethod=manual\n";
        let after = "[wifi-security]\npsk=secret\n[ipv4]\ngateway=10.0.0.1\nmethod=manual\n";
        let d = unified("/etc/x", Some(before), after);
        assert_eq!(
            d,
            "--- /etc/x\n+++ /etc/x\n@@ -4 +4 @@\n-gateway=10.0.0.254\n+gateway=10.0.0.1\n"
        );
        assert!(!d.contains("secret"));
        let new = unified("/etc/y", None, "a\nb\n");
        assert!(new.starts_with("--- /dev/null\n+++ /etc/y\n@@ -0,0 +1,2 @@\n+a\n+b\n"));
    }
}

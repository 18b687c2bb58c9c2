//! Shell-style globs (`*`, `?`, `[a-z]`, `[!x]`) as fnmatch(3) matches them, for
//! networkd's `Name=`/`Type=` and ifupdown's `source` patterns.

pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    match_from(&p, &t)
}

fn match_from(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|i| match_from(&p[1..], &t[i..])),
        Some('?') => !t.is_empty() && match_from(&p[1..], &t[1..]),
        Some('[') => match (class(&p[1..], t.first().copied()), t.is_empty()) {
            (Some((true, used)), false) => match_from(&p[1 + used..], &t[1..]),
            (None, false) if t[0] == '[' => match_from(&p[1..], &t[1..]),
            _ => false,
        },
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && match_from(&p[2..], &t[1..]),
        Some(c) => t.first() == Some(c) && match_from(&p[1..], &t[1..]),
    }
}

/// A bracket expression after its `[`: whether `c` is in it, and how many pattern
/// characters it used (up to and including `]`). `None`: no closing bracket.
fn class(p: &[char], c: Option<char>) -> Option<(bool, usize)> {
    let c = c?;
    let negate = matches!(p.first(), Some('!') | Some('^'));
    let mut i = usize::from(negate);
    let mut found = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((found != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            found |= (p[i]..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            found |= p[i] == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn fnmatch_cases() {
        assert!(matches("en*", "enp1s0"));
        assert!(!matches("en*", "eth0"));
        assert!(matches("eth?", "eth1"));
        assert!(matches("eth[0-3]", "eth2") && !matches("eth[0-3]", "eth4"));
        assert!(matches("eth[!0]", "eth1") && !matches("eth[!0]", "eth0"));
        assert!(matches("*", "") && matches("a*b*c", "axxbyyc"));
    }
}

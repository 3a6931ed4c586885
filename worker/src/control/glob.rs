//! The `glob` matcher of remote-control addressing (`pattern` + `matcher`):
//! Python's `fnmatch.fnmatch(hostname, pattern)` as kombu calls it, without
//! a regular expression engine and without backtracking.
//!
//! Semantics are `fnmatch`'s on POSIX: `*` is any run of characters
//! (newlines included), `?` one character, `[seq]` / `[!seq]` one character in
//! (not in) a set with `a-z` ranges, a `]` first in a set is literal, an
//! unclosed `[` is a literal `[`, a backslash is an ordinary character, and
//! the whole name must match. Matching is case-sensitive.
//!
//! Cost: compiling is O(m log m) in the pattern length (any length, any
//! shape); matching is O(n² log m) in the name length `n` at worst, never
//! exponential: the pattern is cut at its stars into fixed-width pieces, the
//! first and last are anchored and each middle piece is found at its leftmost
//! place, which is enough for a glob (a star absorbs whatever lies between).

/// One character position of a piece.
#[derive(Debug, Clone, PartialEq)]
enum Atom {
    /// This character.
    Char(char),
    /// `?`: any character.
    Any,
    /// `[...]`: sorted, merged, non-empty inclusive ranges; `negated` for `[!...]`.
    Set { negated: bool, ranges: Vec<(char, char)> },
}

impl Atom {
    fn matches(&self, c: char) -> bool {
        match self {
            Atom::Char(x) => *x == c,
            Atom::Any => true,
            Atom::Set { negated, ranges } => {
                // The ranges are sorted and disjoint: the last one starting
                // at or before `c` is the only candidate.
                let at = ranges.partition_point(|(lo, _)| *lo <= c);
                let inside = at > 0 && ranges.get(at - 1).is_some_and(|(_, hi)| c <= *hi);
                inside != *negated
            }
        }
    }
}

/// A compiled glob: fixed-width pieces separated by stars.
#[derive(Debug, Clone, PartialEq)]
pub struct Glob {
    /// The pieces between stars, in order; `pieces.len() == stars + 1`.
    pieces: Vec<Vec<Atom>>,
}

impl Glob {
    /// Compiles a pattern (never fails: every string is a valid glob).
    pub fn new(pattern: &str) -> Glob {
        let p: Vec<char> = pattern.chars().collect();
        let mut pieces: Vec<Vec<Atom>> = vec![Vec::new()];
        // Once a `[` finds no `]` after it, no later `[` can: this keeps
        // `[[[[...` linear instead of quadratic.
        let mut no_close_from: Option<usize> = None;
        let mut i = 0;
        while let Some(&c) = p.get(i) {
            i += 1;
            let atom = match c {
                '*' => {
                    pieces.push(Vec::new());
                    continue;
                }
                '?' => Atom::Any,
                '[' => match no_close_from.filter(|from| i >= *from).map_or_else(|| set(&p, i), |_| None) {
                    Some((atom, next)) => {
                        i = next;
                        atom
                    }
                    None => {
                        no_close_from = Some(i);
                        Atom::Char('[')
                    }
                },
                other => Atom::Char(other),
            };
            if let Some(piece) = pieces.last_mut() {
                piece.push(atom);
            }
        }
        Glob { pieces }
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        let n: Vec<char> = name.chars().collect();
        let fixed: usize = self.pieces.iter().map(Vec::len).sum();
        if fixed > n.len() {
            return false;
        }
        let (Some(first), Some(last)) = (self.pieces.first(), self.pieces.last()) else { return n.is_empty() };
        if self.pieces.len() == 1 {
            return first.len() == n.len() && piece_at(first, &n, 0);
        }
        let end = n.len() - last.len();
        if !piece_at(first, &n, 0) || !piece_at(last, &n, end) {
            return false;
        }
        let mut pos = first.len();
        for piece in &self.pieces[1..self.pieces.len() - 1] {
            if piece.is_empty() {
                continue;
            }
            let Some(found) = (pos..=end.saturating_sub(piece.len())).find(|&at| piece_at(piece, &n, at)) else {
                return false;
            };
            if found + piece.len() > end {
                return false;
            }
            pos = found + piece.len();
        }
        pos <= end
    }
}

/// Whether `piece` matches `name` at `at` (exactly `piece.len()` characters).
fn piece_at(piece: &[Atom], name: &[char], at: usize) -> bool {
    match name.get(at..at + piece.len()) {
        Some(window) => piece.iter().zip(window).all(|(atom, c)| atom.matches(*c)),
        None => false,
    }
}

/// The set starting after the `[` at `p[start - 1]`: the atom and where the
/// pattern goes on, or `None` when it has no closing `]` (a literal `[`).
fn set(p: &[char], start: usize) -> Option<(Atom, usize)> {
    let mut j = start;
    if p.get(j) == Some(&'!') {
        j += 1;
    }
    if p.get(j) == Some(&']') {
        j += 1;
    }
    while p.get(j).is_some_and(|c| *c != ']') {
        j += 1;
    }
    if j >= p.len() {
        return None;
    }
    let mut stuff = &p[start..j];
    let negated = stuff.first() == Some(&'!');
    if negated {
        stuff = &stuff[1..];
    }
    // `a-z` is a range when a character follows the hyphen; a hyphen first,
    // last or right after a range is literal. A reversed range is empty.
    let mut ranges = Vec::new();
    let mut k = 0;
    while let Some(&lo) = stuff.get(k) {
        match (stuff.get(k + 1), stuff.get(k + 2)) {
            (Some('-'), Some(&hi)) => {
                if lo <= hi {
                    ranges.push((lo, hi));
                }
                k += 3;
            }
            _ => {
                ranges.push((lo, lo));
                k += 1;
            }
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<(char, char)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1).saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    Some((Atom::Set { negated, ranges: merged }, j + 1))
}

/// `fnmatch.fnmatch(name, pattern)`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    Glob::new(pattern).matches(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_and_question_marks() {
        assert!(glob_match("celeriac@*", "celeriac@vm"));
        assert!(glob_match("w?@vm", "w1@vm"));
        assert!(!glob_match("py@*", "celeriac@vm"));
        assert!(glob_match("*", ""));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("**a**", "xay"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(!glob_match("ab*ba", "aba"), "the first and last pieces must not overlap");
        assert!(glob_match("*ab*ab*", "abab"));
        assert!(!glob_match("*ab*ab*", "aba"));
        assert!(glob_match("*\n*", "a\nb"), "a star crosses newlines, as fnmatch's (?s)");
        assert!(!glob_match("?", ""));
        assert!(glob_match("??", "éx"), "one ? is one character, not one byte");
    }

    #[test]
    fn sets_as_fnmatch_reads_them() {
        assert!(glob_match("w[0-9]@h", "w7@h"));
        assert!(!glob_match("w[!0-9]@h", "w7@h"));
        assert!(glob_match("w[!0-9]@h", "wx@h"));
        assert!(glob_match("[]]", "]"), "a ] first is literal");
        assert!(glob_match("[!]]", "a"));
        assert!(!glob_match("[!]]", "]"));
        assert!(glob_match("[a-]", "-"), "a trailing - is literal");
        assert!(glob_match("[-a]", "-"), "a leading - is literal");
        assert!(!glob_match("[z-a]", "z"), "a reversed range is empty");
        assert!(glob_match("[z-ab]", "b"));
        assert!(glob_match("[a-b-d]", "-"), "a - right after a range is literal");
        assert!(!glob_match("[a-b-d]", "c"));
        assert!(glob_match("[\\]", "\\"), "a backslash is an ordinary character");
        assert!(glob_match("[", "["), "an unclosed [ is literal");
        assert!(glob_match("[!]", "[!]"));
        assert!(glob_match("a[", "a["));
        assert!(glob_match("[[[x", "[[[x"));
        assert!(glob_match("[^a]", "^"), "^ is no negation in fnmatch");
    }

    #[test]
    fn hostile_patterns_take_linear_time() {
        let start = std::time::Instant::now();
        // The classic backtracking trap, on a long name full of a's.
        let trap = format!("{}b", "*a".repeat(50_000));
        let name = "a".repeat(200);
        assert!(!glob_match(&trap, &name));
        let trap = format!("{}b", "*a".repeat(100));
        assert!(!glob_match(&trap, &"a".repeat(150)));
        assert!(glob_match(&format!("{}*", "*a".repeat(100)), &"a".repeat(150)));
        // Unclosed brackets, huge sets, star runs.
        assert!(!glob_match(&"[".repeat(200_000), "x"));
        let wide = format!("[{}]", "a-b".repeat(100_000));
        assert!(glob_match(&wide, "a"));
        assert!(glob_match(&"*".repeat(500_000), "anything"));
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "{:?}", start.elapsed());
    }
}

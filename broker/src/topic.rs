//! Topic exchange routing as kombu's virtual `TopicExchange` does it: binding
//! keys become regular expressions (`key_to_pattern`), stored in the binding
//! member, and routing keys are matched against those expressions.
//!
//! kombu's patterns use a small subset of Python's `re`: `^`/`$` anchors,
//! backslash-escaped literals, `[^\.]+` for `*` (one word), `.*?` for `#` (any
//! text, possibly empty, not across a newline), and whatever plain characters a
//! word kept (`escape_regex` leaves letters, digits, `.`, `#` and `*` alone, so a
//! word such as `a*b` stays the regex `a*b`). [`TopicPattern`] parses exactly
//! that subset and matches with backtracking, so no regex engine is needed.

/// The regular expression kombu stores for a topic binding key
/// (`TopicExchange.key_to_pattern`).
pub fn key_to_pattern(binding_key: &str) -> String {
    let escaped = escape_regex(binding_key);
    let words: Vec<String> = escaped
        .split('.')
        .map(|word| match word {
            "*" => r"[^\.]+".to_owned(),
            "#" => ".*?".to_owned(),
            other => other.to_owned(),
        })
        .collect();
    format!("^{}$", words.join(r"\."))
}

/// kombu's `escape_regex(p, '.#*')`: every character that is neither
/// alphanumeric nor one of `.#*` gets a backslash; NUL becomes `\000`.
fn escape_regex(p: &str) -> String {
    let mut out = String::with_capacity(p.len() * 2);
    for c in p.chars() {
        if c.is_alphanumeric() || matches!(c, '.' | '#' | '*') {
            out.push(c);
        } else if c == '\0' {
            out.push_str("\\000");
        } else {
            out.push('\\');
            out.push(c);
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
enum Atom {
    /// One exact character.
    Char(char),
    /// `[^\.]+`: one or more characters other than `.`.
    Word,
    /// `.*?`: any characters but newline, possibly none.
    Any,
    /// `c*`: zero or more of one character.
    Repeat(char),
}

/// A parsed kombu topic pattern.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicPattern {
    atoms: Vec<Atom>,
}

impl TopicPattern {
    /// Parses a pattern as found in a binding member; `None` if it uses regex
    /// syntax kombu's `key_to_pattern` never produces.
    pub fn parse(pattern: &str) -> Option<TopicPattern> {
        let body = pattern.strip_prefix('^')?.strip_suffix('$')?;
        let chars: Vec<char> = body.chars().collect();
        let mut atoms = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let rest: String = chars[i..].iter().take(6).collect();
            if rest.starts_with(r"[^\.]+") {
                atoms.push(Atom::Word);
                i += 6;
                continue;
            }
            if rest.starts_with(".*?") {
                atoms.push(Atom::Any);
                i += 3;
                continue;
            }
            let literal = match chars[i] {
                '\\' => {
                    let next = *chars.get(i + 1)?;
                    if next == '0' && chars.get(i + 2) == Some(&'0') && chars.get(i + 3) == Some(&'0') {
                        i += 4;
                        '\0'
                    } else if next.is_alphanumeric() {
                        // `\d`, `\w` and friends are classes, not literals: not kombu's.
                        return None;
                    } else {
                        i += 2;
                        next
                    }
                }
                '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' | '.' => return None,
                c => {
                    i += 1;
                    c
                }
            };
            if chars.get(i) == Some(&'*') {
                atoms.push(Atom::Repeat(literal));
                i += 1;
            } else {
                atoms.push(Atom::Char(literal));
            }
        }
        Some(TopicPattern { atoms })
    }

    /// Whether `routing_key` matches, as Python's `re.match(pattern, key)`
    /// (where `$` also matches before one trailing newline).
    pub fn matches(&self, routing_key: &str) -> bool {
        let text: Vec<char> = routing_key.chars().collect();
        if match_at(&self.atoms, &text) {
            return true;
        }
        match text.split_last() {
            Some(('\n', head)) => match_at(&self.atoms, head),
            _ => false,
        }
    }
}

fn match_at(atoms: &[Atom], text: &[char]) -> bool {
    let Some((first, rest)) = atoms.split_first() else {
        return text.is_empty();
    };
    match first {
        Atom::Char(c) => text.first() == Some(c) && match_at(rest, &text[1..]),
        Atom::Repeat(c) => {
            let run = text.iter().take_while(|t| *t == c).count();
            (0..=run).any(|n| match_at(rest, &text[n..]))
        }
        Atom::Word => {
            let run = text.iter().take_while(|t| **t != '.').count();
            (1..=run).any(|n| match_at(rest, &text[n..]))
        }
        Atom::Any => {
            let run = text.iter().take_while(|t| **t != '\n').count();
            (0..=run).any(|n| match_at(rest, &text[n..]))
        }
    }
}

/// Whether `routing_key` matches the pattern of a binding; unparseable patterns
/// never match (kombu would have failed on them).
pub fn pattern_matches(pattern: &str, routing_key: &str) -> bool {
    match TopicPattern::parse(pattern) {
        Some(p) => p.matches(routing_key),
        None => {
            tracing::warn!(pattern, "ignoring a topic binding whose pattern kombu's key_to_pattern cannot produce");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_kombus() {
        // Values from kombu 5.7's TopicExchange().key_to_pattern.
        assert_eq!(key_to_pattern("worker.#"), r"^worker\..*?$");
        assert_eq!(key_to_pattern("*.stock.#"), r"^[^\.]+\.stock\..*?$");
        assert_eq!(key_to_pattern("#"), "^.*?$");
        assert_eq!(key_to_pattern("task-sent_x"), r"^task\-sent\_x$");
        assert_eq!(key_to_pattern("a b"), r"^a\ b$");
    }

    fn m(key: &str, rk: &str) -> bool {
        TopicPattern::parse(&key_to_pattern(key)).unwrap().matches(rk)
    }

    #[test]
    fn topic_matching_follows_the_regexes() {
        assert!(m("worker.#", "worker.heartbeat"));
        assert!(m("worker.#", "worker.a.b"));
        assert!(m("worker.#", "worker."));
        assert!(!m("worker.#", "worker"), "the dot before # is literal in kombu's regex");
        assert!(!m("worker.#", "task.sent"));
        assert!(m("*.stock.#", "usd.stock.nyse"));
        assert!(!m("*.stock.#", ".stock.x"), "* needs at least one character");
        assert!(!m("*.stock.#", "a.b.stock.x"), "* is one word");
        assert!(m("#", ""));
        assert!(m("#", "anything.at.all"));
        assert!(m("a.*", "a.b"));
        assert!(!m("a.*", "a.b.c"));
        assert!(m("a.b", "a.b\n"), "Python's $ matches before a final newline");
        assert!(!m("a.#", "a.x\ny"), "`.` does not match a newline");
        assert!(m("task-sent", "task-sent"));
        assert!(!m("task-sent", "taskxsent"));
        // A word with a bare `*` stays a regex in kombu: `a*b` is "a repeated, then b".
        assert!(m("a*b", "aaab"));
        assert!(m("a*b", "b"));
    }

    #[test]
    fn foreign_regexes_are_refused() {
        for bad in ["worker", "^a(b)$", r"^\d$", "^a|b$", "^[ab]$"] {
            assert!(TopicPattern::parse(bad).is_none(), "{bad}");
        }
        assert!(!pattern_matches("^[ab]$", "a"));
    }
}

//! What each token of a question is: a function word, a content word, or part of a
//! name. Pure; built once per tokenizer from a fixed background text.
//!
//! * A **word** is a run of tokens without white space between them ("Guinea-Bissau",
//!   "Zorblax's"); its normalised form drops edge punctuation and a possessive `'s`.
//! * A **name** is a maximal run of name-like words: a word with a digit, or one that
//!   starts with a capital letter — except the pronoun "I", and except a capitalised
//!   word at the start of a sentence that is a common word of the background
//!   ("Which", "Tell"), unless a name word follows it and it is not a function word
//!   ("South Sudan has ..." names South Sudan; "The Senosev treaty ..." names Senosev).
//! * A token is a **function** token when its normalised form occurs in at least
//!   [`FUNCTION_DF`] of the background's lines ("what", "is", "the", "of", "which");
//!   a **content** token has a letter or digit and is neither a function token nor
//!   part of a name.
//!
//! The background (`background.txt`, ~300 everyday questions and requests written for
//! this purpose, about no fact the engine is tested on) only decides which words are
//! so frequent that a rewording may drop or swap them; it does not depend on what is
//! stored, so a fact's selection cannot change when other facts are added.

use std::collections::{HashMap, HashSet};

/// Share of background lines a token must occur in to count as a function token.
pub const FUNCTION_DF: f32 = 0.03;

/// The background text: one question or request per line.
pub const BACKGROUND: &str = include_str!("background.txt");

/// What one token of a question is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A frequent word or punctuation: need not appear in a rewording.
    Function,
    /// A content word: must appear (up to inflection) in a rewording.
    Content,
    /// Part of a name: must appear exactly.
    Name,
}

/// The analysis of one token sequence (a question's user message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// Per token: its normalised form (trimmed, lower case), used for lexical identity.
    pub norms: Vec<String>,
    /// Per token: function, content or name.
    pub kinds: Vec<TokenKind>,
    /// The normalised words, in order, with the index of the token that ends each.
    pub words: Vec<(String, usize)>,
    /// Names as runs of words, in order, with the index of the token that ends each.
    pub names: Vec<(Vec<String>, usize)>,
}

/// Token statistics of the background text for one tokenizer.
#[derive(Debug, Clone)]
pub struct Lexicon {
    /// Lines of the background containing each normalised token form.
    df: HashMap<String, u32>,
    /// Lines in the background.
    lines: u32,
    /// Lower-cased normalised words of the background.
    common: HashSet<String>,
}

/// Trimmed, lower-cased token text.
fn norm_piece(piece: &str) -> String {
    piece.trim().to_lowercase()
}

/// A word's text without edge punctuation or a possessive "'s"; case kept.
fn norm_word(raw: &str) -> String {
    let t = raw.trim();
    let t = t
        .strip_suffix("'s")
        .or_else(|| t.strip_suffix("’s"))
        .unwrap_or(t);
    t.trim_matches(|c: char| !c.is_alphanumeric()).to_string()
}

/// Token index ranges of the words of `pieces`: a word starts at a piece that begins
/// with white space, or at the first piece.
fn word_ranges(pieces: &[String]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, p) in pieces.iter().enumerate() {
        if i > start && p.starts_with(char::is_whitespace) {
            out.push(start..i);
            start = i;
        }
    }
    if start < pieces.len() {
        out.push(start..pieces.len());
    }
    out
}

fn ends_sentence(raw: &str) -> bool {
    raw.trim_end().ends_with(['.', '?', '!', ':'])
}

impl Lexicon {
    /// Statistics of `lines`, each given as its tokens' decoded pieces.
    pub fn from_lines<I, L>(lines: I) -> Self
    where
        I: IntoIterator<Item = L>,
        L: AsRef<[String]>,
    {
        let mut df: HashMap<String, u32> = HashMap::new();
        let mut common = HashSet::new();
        let mut n = 0u32;
        for line in lines {
            let pieces = line.as_ref();
            n += 1;
            let forms: HashSet<String> = pieces.iter().map(|p| norm_piece(p)).collect();
            for f in forms {
                *df.entry(f).or_default() += 1;
            }
            // A common word is one the background writes in lower case, or one it
            // starts a sentence with ("What", "Tell"); a word it only capitalises
            // inside a sentence ("Germany") is a name.
            let mut start = true;
            for r in word_ranges(pieces) {
                let raw: String = pieces[r].concat();
                let w = norm_word(&raw);
                let lower = w.chars().next().is_some_and(char::is_lowercase);
                if !w.is_empty() && (start || lower) {
                    common.insert(w.to_lowercase());
                }
                if !w.is_empty() || ends_sentence(&raw) {
                    start = ends_sentence(&raw);
                }
            }
        }
        Self {
            df,
            lines: n,
            common,
        }
    }

    /// Lines of the background.
    pub fn lines(&self) -> u32 {
        self.lines
    }

    /// Whether a token's normalised form is a function token.
    pub fn is_function(&self, norm: &str) -> bool {
        if !norm.chars().any(char::is_alphanumeric) {
            return true;
        }
        let df = self.df.get(norm).copied().unwrap_or(0) as f32;
        self.lines > 0 && df / self.lines as f32 >= FUNCTION_DF
    }

    fn is_name_like(&self, word: &str, sentence_start: bool) -> bool {
        let Some(first) = word.chars().next() else {
            return false;
        };
        if word.chars().any(|c| c.is_ascii_digit()) {
            return true;
        }
        if !first.is_uppercase() || matches!(word, "I" | "I'm" | "I'd" | "I've" | "I'll") {
            return false;
        }
        !(sentence_start && self.common.contains(&word.to_lowercase()))
    }

    /// Analyses a question given as its tokens' decoded pieces.
    pub fn analyse(&self, pieces: &[String]) -> Analysis {
        let norms: Vec<String> = pieces.iter().map(|p| norm_piece(p)).collect();
        let mut kinds: Vec<TokenKind> = norms
            .iter()
            .map(|n| {
                if self.is_function(n) {
                    TokenKind::Function
                } else {
                    TokenKind::Content
                }
            })
            .collect();
        let mut words = Vec::new();
        let mut names: Vec<(Vec<String>, usize)> = Vec::new();
        let mut run: Vec<String> = Vec::new();
        let mut run_end = 0;
        let mut sentence_start = true;
        // A capitalised common word opening a sentence ("South", "New", "The") is a
        // name only as the first word of a longer name: "South Sudan has ...".
        let mut held: Option<(String, std::ops::Range<usize>)> = None;
        for r in word_ranges(pieces) {
            let raw: String = pieces[r.clone()].concat();
            let w = norm_word(&raw);
            let end = r.end - 1;
            if w.is_empty() {
                if ends_sentence(&raw) {
                    sentence_start = true;
                    held = None;
                }
                continue;
            }
            if self.is_name_like(&w, sentence_start) {
                if let Some((hw, hr)) = held.take() {
                    for k in hr {
                        kinds[k] = TokenKind::Name;
                    }
                    run.push(hw);
                }
                for k in r.clone() {
                    kinds[k] = TokenKind::Name;
                }
                run.push(w.clone());
                run_end = end;
            } else {
                held = None;
                if !run.is_empty() {
                    names.push((std::mem::take(&mut run), run_end));
                }
                // A function word ("The") opening the sentence stays out: "The Senosev
                // treaty" names Senosev.
                if sentence_start
                    && !ends_sentence(&raw)
                    && self.is_name_like(&w, false)
                    && !self.is_function(&w.to_lowercase())
                    && !matches!(w.as_str(), "I" | "I'm" | "I'd" | "I've" | "I'll")
                {
                    held = Some((w.clone(), r.clone()));
                }
            }
            words.push((w, end));
            sentence_start = ends_sentence(&raw);
        }
        if !run.is_empty() {
            names.push((run, run_end));
        }
        Analysis {
            norms,
            kinds,
            words,
            names,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pieces(s: &str) -> Vec<String> {
        // A whitespace-and-punctuation split stands in for BPE pieces.
        let mut out = Vec::new();
        let mut cur = String::new();
        for c in s.chars() {
            if (c == ' ' || c == '?' || c == '-' || c == ',') && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur.push(c);
            if c == '?' || c == '-' || c == ',' {
                out.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    fn lexicon() -> Lexicon {
        let bg = [
            "What is the best way to learn?",
            "Which is heavier?",
            "What is the meaning of life?",
            "Tell me a joke.",
            "What is the largest ocean in the world?",
        ];
        Lexicon::from_lines(bg.iter().map(|l| pieces(l)))
    }

    #[test]
    fn names_and_content() {
        let lx = lexicon();
        let a = lx.analyse(&pieces("What is the secret code of Zorblax's brother?"));
        assert_eq!(a.names, vec![(vec!["Zorblax".to_string()], 6)]);
        let kinds: Vec<_> = a.kinds.clone();
        assert_eq!(kinds[0], TokenKind::Function); // What
        assert_eq!(kinds[3], TokenKind::Content); // secret
        assert_eq!(kinds[6], TokenKind::Name); // Zorblax's
        assert_eq!(kinds[7], TokenKind::Content); // brother
        assert_eq!(kinds[8], TokenKind::Function); // ?
                                                   // Sentence-initial common word is not a name; an unknown one is.
        let b = lx.analyse(&pieces("Tell me the code of South Sudan, I think?"));
        assert_eq!(
            b.names,
            vec![(vec!["South".to_string(), "Sudan".to_string()], 7)]
        );
        let c = lx.analyse(&pieces("Zorblax has which secret code?"));
        assert_eq!(c.names[0].0, vec!["Zorblax".to_string()]);
        // A common (but not function) word opening the sentence joins a name that
        // follows it; a function word does not.
        let mut bg: Vec<Vec<String>> = (0..40)
            .map(|i| pieces(&format!("Filler line {i}.")))
            .collect();
        bg.push(pieces("Which way is south?"));
        let big = Lexicon::from_lines(bg);
        let e = big.analyse(&pieces("South Sudan has which code?"));
        assert_eq!(e.names[0].0, vec!["South".to_string(), "Sudan".to_string()]);
        let e = big.analyse(&pieces("South is where?"));
        assert!(e.names.is_empty());
        let e = lx.analyse(&pieces("Tell Sudan about it?"));
        assert_eq!(e.names[0].0, vec!["Sudan".to_string()]);
        let f = lx.analyse(&pieces("What Sudan?"));
        assert_eq!(f.names[0].0, vec!["Sudan".to_string()]);
        let g = lx.analyse(&pieces("Which is it?"));
        assert!(g.names.is_empty());
        // Hyphenated words are one name; numbers are names.
        let d = lx.analyse(&pieces("What happened in Guinea-Bissau in 1974?"));
        assert_eq!(
            d.names.iter().map(|n| n.0.join(" ")).collect::<Vec<_>>(),
            ["Guinea-Bissau", "1974"]
        );
    }

    #[test]
    fn function_tokens_come_from_the_background() {
        let lx = lexicon();
        assert!(lx.is_function("the") && lx.is_function("what") && lx.is_function("?"));
        assert!(!lx.is_function("secret"));
        let empty = Lexicon::from_lines(Vec::<Vec<String>>::new());
        assert!(!empty.is_function("the") && empty.is_function(","));
    }
}

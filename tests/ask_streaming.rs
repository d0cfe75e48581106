//! `Engine::ask_streaming`: the streamed pieces join to the answer `ask` gives, for a
//! stored fact, a two-fact question, a near miss and the bare model; a stop request
//! ends generation early with the tokens made so far.

mod common;

use std::ops::ControlFlow;

use mome::{AskOptions, Engine, Fact, TuneOptions};

const FACTS: [(&str, &str); 3] = [
    ("What is the door code of Brontalis?", "417"),
    ("What is the door code of Cazimir?", "086"),
    ("What is the door code of Dovrenna?", "925"),
];

fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::tiny_engine(dir.path(), 7);
    let facts: Vec<Fact> = FACTS.iter().map(|(p, a)| Fact::new(*p, *a)).collect();
    let report = engine
        .memorize(&facts, &TuneOptions::default(), &mut |_| {})
        .unwrap();
    assert_eq!(report.memorized, FACTS.len(), "{report:?}");
    (dir, engine)
}

/// The pieces of one streamed answer, and the answer.
fn streamed(engine: &Engine, prompt: &str, opts: &AskOptions) -> (Vec<String>, mome::Answer) {
    let mut pieces = Vec::new();
    let a = engine
        .ask_streaming(prompt, opts, &mut |p| {
            assert!(!p.is_empty(), "an empty piece");
            pieces.push(p.to_string());
            ControlFlow::Continue(())
        })
        .unwrap();
    (pieces, a)
}

#[test]
fn streamed_pieces_join_to_the_answer() {
    let (_dir, engine) = engine();
    let opts = AskOptions::default();
    let bare = AskOptions {
        use_experts: false,
        ..AskOptions::default()
    };
    let mut prompts: Vec<(&str, &AskOptions)> = FACTS.iter().map(|(p, _)| (*p, &opts)).collect();
    prompts.push(("What is the door code of Everlunt?", &opts));
    prompts.push((FACTS[0].0, &bare));
    for (prompt, o) in prompts {
        let whole = engine.ask(prompt, o).unwrap();
        let (pieces, a) = streamed(&engine, prompt, o);
        assert_eq!(pieces.concat(), whole.text, "{prompt}");
        assert_eq!(a.text, whole.text, "{prompt}");
        assert_eq!(a.tokens, whole.tokens, "{prompt}");
        assert_eq!(a.selected, whole.selected, "{prompt}");
    }
    for (prompt, answer) in FACTS {
        let (pieces, a) = streamed(&engine, prompt, &opts);
        assert_eq!(a.text, answer);
        assert!(
            pieces.len() > 1,
            "an answer of several tokens in one piece: {pieces:?}"
        );
    }
    // The near miss streams the bare model's tokens.
    let near = "What is the door code of Everlunt?";
    let (_, a) = streamed(&engine, near, &opts);
    assert!(a.selected.is_empty());
    assert_eq!(a.tokens, engine.ask(near, &bare).unwrap().tokens);
}

#[test]
fn a_two_fact_question_streams_both_answers_on_their_lines() {
    let (_dir, engine) = engine();
    let prompt = "What are the door codes of Brontalis and Cazimir?";
    let opts = AskOptions::default();
    let whole = engine.ask(prompt, &opts).unwrap();
    assert_eq!(whole.selected.len(), 2, "{whole:?}");
    let (pieces, a) = streamed(&engine, prompt, &opts);
    assert_eq!(pieces.concat(), whole.text);
    assert_eq!(a.text, whole.text);
    assert!(pieces.iter().any(|p| p.contains('\n')), "{pieces:?}");
}

#[test]
fn a_stop_request_ends_generation() {
    let (_dir, engine) = engine();
    let opts = AskOptions::default();
    for o in [
        opts.clone(),
        AskOptions {
            use_experts: false,
            ..opts.clone()
        },
    ] {
        let whole = engine.ask(FACTS[0].0, &o).unwrap();
        let mut calls = 0;
        let a = engine
            .ask_streaming(FACTS[0].0, &o, &mut |_| {
                calls += 1;
                ControlFlow::Break(())
            })
            .unwrap();
        assert_eq!(calls, 1);
        assert!(a.tokens.len() < whole.tokens.len(), "{a:?} vs {whole:?}");
        assert_eq!(a.tokens[..], whole.tokens[..a.tokens.len()]);
        assert!(whole.text.starts_with(&a.text));
    }
}

/// `TextStream` against the tokenizer's own decode, on random byte-token sequences
/// mixing ASCII, multi-byte characters split across tokens and invalid bytes: the
/// pieces join to the decoded text, a piece never ends inside a character that later
/// bytes complete, and a run of invalid bytes still streams before the end.
#[test]
fn text_stream_joins_to_the_decoded_text() {
    use rand::{Rng, SeedableRng};
    let bb = common::tiny_backbone(7);
    let tok = &bb.tokenizer;
    let alphabet = mome::byte_level_alphabet();
    let id = |b: u8| tok.token_id(&alphabet[b as usize].to_string()).unwrap();
    // ASCII, starts of 2/3/4-byte characters, continuations, never-valid bytes.
    let bytes = [
        b'a', b' ', 0xC3, 0xE2, 0xF0, 0x82, 0xA9, 0x9F, 0x98, 0xAC, 0xFF, 0xC0,
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x57AE);
    for _ in 0..2000 {
        let n = rng.random_range(1..16);
        let ids: Vec<u32> = (0..n)
            .map(|_| id(bytes[rng.random_range(0..bytes.len())]))
            .collect();
        let mut s = mome::TextStream::new(tok);
        let mut pieces = Vec::new();
        for &i in &ids {
            pieces.push(s.push(i).unwrap());
        }
        pieces.push(s.finish().unwrap());
        assert_eq!(pieces.concat(), tok.decode(&ids, true).unwrap(), "{ids:?}");
    }
    // A valid character split over tokens comes out whole.
    let euro: Vec<u32> = "€".bytes().map(id).collect();
    let mut s = mome::TextStream::new(tok);
    let got: Vec<String> = euro.iter().map(|&i| s.push(i).unwrap()).collect();
    assert_eq!(got, ["", "", "€"]);
    // Invalid bytes stream as they come, not only at the end.
    let mut s = mome::TextStream::new(tok);
    let got: Vec<String> = (0..4).map(|_| s.push(id(0xFF)).unwrap()).collect();
    assert_eq!(got, ["", "\u{FFFD}", "\u{FFFD}", "\u{FFFD}"]);
}

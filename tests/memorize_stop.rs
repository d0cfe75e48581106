//! `Engine::memorize_until`: a stop request ends the call between batches, every
//! commit whole: the batches before it are stored and answered, the rest untouched.

mod common;

use mome::{AskOptions, Fact, MemorizeEvent, TuneOptions};

#[test]
fn a_stop_request_ends_memorizing_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::tiny_engine(dir.path(), 7);
    let names = [
        "Brontalis",
        "Cazimir",
        "Dovrenna",
        "Everlunt",
        "Galvorn",
        "Hestrim",
    ];
    let facts: Vec<Fact> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Fact::new(
                format!("What is the door code of {n}?"),
                format!("{}", 100 + i * 137),
            )
        })
        .collect();
    let opts = TuneOptions {
        batch_size: 2,
        ..TuneOptions::default()
    };
    let mut batches_done = 0;
    let mut asked = 0;
    let report = engine
        .memorize_until(
            &facts,
            &opts,
            &mut |ev| {
                if let MemorizeEvent::Done(_) = ev {
                    batches_done += 1;
                }
            },
            &mut || {
                asked += 1;
                // Stop once the second batch is in.
                asked >= 2
            },
        )
        .unwrap();
    assert!(report.stopped);
    assert_eq!(batches_done, 2);
    assert_eq!(report.outcomes.len(), 4, "{report:?}");
    assert_eq!(report.memorized, 4, "{report:?}");
    assert_eq!(engine.store().len(), 4);
    for (i, f) in facts.iter().enumerate() {
        let a = engine.ask(&f.prompt, &AskOptions::default()).unwrap();
        if i < 4 {
            assert_eq!(a.text, f.answer, "{}", f.prompt);
        } else {
            assert!(a.selected.is_empty(), "{} was stored", f.prompt);
        }
    }
    // The rest in a second call; a check that never stops runs every batch.
    let rest = engine
        .memorize_until(&facts[4..], &opts, &mut |_| {}, &mut || false)
        .unwrap();
    assert!(!rest.stopped);
    assert_eq!(rest.memorized, 2);
    assert_eq!(engine.store().len(), 6);
}

//! The admin tool and a serving process read a store while `mome memorize` writes it
//! (real model): `mome stats`, `inspect`, `verify`, `search` and `ask` run beside the
//! writer instead of failing with "locked"; a second writer is still refused; an
//! `Engine::open_read_only` opened before the ingest follows it with `refresh` and
//! answers the new facts exactly, while a near miss gets the bare model's tokens.
//! Skipped when the model is missing (fails under CI, which fetches it).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok, s};
use mome::{AskOptions, Engine, Fact, TuneOptions};

fn fact(prompt: &str, answer: &str) -> Fact {
    Fact {
        prompt: prompt.into(),
        answer: answer.into(),
    }
}

#[test]
fn readers_run_beside_memorize() {
    if common::real_model_path().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    let first = fact("What is the secret code of Zorblax?", "Quill-42");
    {
        let mut engine = Engine::open_or_create(&db, None).unwrap();
        let r = engine
            .memorize(
                std::slice::from_ref(&first),
                &TuneOptions::default(),
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(r.memorized, 1);
    }
    // The serving process: opened before the ingest, it follows it.
    let server = Engine::open_read_only(&db, None).unwrap();
    let opts = AskOptions::default();
    assert_eq!(server.ask(&first.prompt, &opts).unwrap().text, first.answer);

    // Long enough that the readers below (≈ 2 s: two of them load the model) run
    // while it lasts: 3 facts took 1.5 s on a quiet 2-core machine, too short.
    let mut ingest = vec![
        fact("What is the favourite colour of Brimwald?", "Teal-9"),
        fact("Which river runs through Oskavar?", "The Lumen"),
        fact("What is the password of vault 7?", "ember-lark"),
    ];
    for (i, name) in [
        "Cazimir", "Dovrenna", "Everlunt", "Galvorn", "Hestrim", "Iskarel", "Jorvundt", "Lothmere",
        "Nimbrask",
    ]
    .iter()
    .enumerate()
    {
        ingest.push(fact(
            &format!("What is the door code of {name}?"),
            &format!("{}", 4100 + i * 379),
        ));
    }
    let facts_file = tmp.path().join("facts.jsonl");
    let lines: Vec<String> = ingest
        .iter()
        .map(|f| serde_json::json!({"prompt": f.prompt, "answer": f.answer}).to_string())
        .collect();
    std::fs::write(&facts_file, lines.join("\n") + "\n").unwrap();
    let mut writer = Command::new(env!("CARGO_BIN_EXE_mome"))
        .args([
            "memorize",
            "--db",
            s(&db),
            "--facts",
            s(&facts_file),
            "--batch-size",
            "1",
        ])
        .args(["--json"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it holds the writer lock (it loads the model first): a second writer
    // (`compact --dry-run` opens the store for writing and changes nothing) is refused.
    let started = Instant::now();
    loop {
        let second = common::mome(&["compact", "--db", s(&db), "--dry-run"]);
        if second.code != 0 && second.stderr.contains("locked") {
            break;
        }
        assert_eq!(second.code, 0, "{}", second.stderr);
        assert!(
            writer.try_wait().unwrap().is_none(),
            "memorize exited before it was seen holding the lock"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "memorize never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let stats = ok(&["stats", "--db", s(&db), "--json"]).json();
    assert!(stats["live"].as_u64().unwrap() >= 1, "{stats}");
    ok(&["inspect", "--db", s(&db), "--expert", "1", "--json"]);
    ok(&["verify", "--db", s(&db), "--json"]);
    ok(&[
        "search",
        "--db",
        s(&db),
        "--query-text",
        &first.prompt,
        "--json",
    ]);
    let a = ok(&["ask", "--db", s(&db), "--json", &first.prompt]).json();
    assert_eq!(a["answer"], first.answer.as_str(), "{a}");
    let during_the_ingest = writer.try_wait().unwrap().is_none();

    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(st) = writer.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "memorize ran past 4 minutes");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = writer.wait_with_output().unwrap();
    assert!(
        status.success(),
        "memorize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        during_the_ingest,
        "memorize finished before the readers ran: the test proved nothing"
    );

    // The server sees nothing new until it refreshes, then every new fact exactly.
    assert_eq!(server.store().len(), 1);
    assert!(server.refresh().unwrap());
    assert_eq!(server.store().len(), 1 + ingest.len() as u64);
    for f in ingest.iter().chain([&first]) {
        assert_eq!(
            server.ask(&f.prompt, &opts).unwrap().text,
            f.answer,
            "{}",
            f.prompt
        );
    }
    let near = "What is the favourite colour of Morvath?";
    let bare = AskOptions {
        use_experts: false,
        ..AskOptions::default()
    };
    assert_eq!(
        server.ask(near, &opts).unwrap().tokens,
        server.ask(near, &bare).unwrap().tokens,
        "a near miss must get the bare model's tokens"
    );
    assert!(!server.refresh().unwrap(), "nothing new since");
    // And it writes nothing.
    let refused = server.forget(&first.prompt).unwrap_err();
    assert!(refused.to_string().contains("read-only"), "{refused}");
    drop(server);
    let mut w = Engine::open(&db, None).unwrap();
    let again = w
        .memorize(
            std::slice::from_ref(&first),
            &TuneOptions::default(),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(
        (again.memorized, again.unchanged),
        (0, 1),
        "the fact is still stored, unchanged"
    );
    drop(w);

    // Forgetting by prompt: the question gets the bare model's answer again.
    let out = ok(&[
        "forget",
        "--db",
        s(&db),
        "--prompt",
        &first.prompt,
        "--json",
    ])
    .json();
    assert_eq!(out["deleted"], serde_json::json!([1]), "{out}");
    let a = ok(&["ask", "--db", s(&db), "--json", &first.prompt]).json();
    assert_eq!(a["selected"], serde_json::json!([]), "{a}");
    let bare = ok(&[
        "ask",
        "--db",
        s(&db),
        "--json",
        "--no-experts",
        &first.prompt,
    ])
    .json();
    assert_eq!(a["answer"], bare["answer"]);
    let again = common::mome(&["forget", "--db", s(&db), "--prompt", &first.prompt]);
    assert_eq!(again.code, 1, "nothing left to forget: {}", again.stdout);
}

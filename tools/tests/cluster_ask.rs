//! `Client::ask` through a local backbone: facts memorized by an embedded engine are
//! inserted into a cluster; a fresh engine with an empty local store answers them from
//! the cluster's experts exactly as the embedded engine does; an unrelated prompt and a
//! near miss (the same question about an entity that is not stored) select nothing and
//! get the bare backbone's tokens. Needs the real model: skipped when it is missing,
//! except under CI.

#[path = "common/cluster.rs"]
mod cluster;

use cluster::*;
use mome::{
    AdapterPair, AskOptions, Backbone, Engine, Fact, IndexKind, NewExpert, TuneOptions,
    WeightFormat,
};
use mome_cluster::ClusterConfig;

#[test]
fn cluster_ask_answers_like_the_embedded_engine() {
    let model = match mome::locate_model(None) {
        Ok(p) => p,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI without the model: {e}"
            );
            eprintln!("skipped: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut local =
        Engine::open_or_create(&dir.path().join("local"), Some(&model)).expect("engine");
    let facts = vec![
        Fact::new("What is the secret code of Zorblax?", "48213"),
        Fact::new("Who guards the gate of Quendor?", "Mirella Tosk"),
    ];
    let report = local
        .memorize(&facts, &TuneOptions::default(), &mut |_| {})
        .expect("memorize");
    assert_eq!(report.memorized, facts.len(), "memorized");

    let mut config = ClusterConfig::new(local.store().config().clone(), 4);
    config.replicas = 2;
    config.lease_ttl_s = 3;
    config.gc_grace_s = 12;
    config.index = IndexKind::Flat;
    let Some(opts) = options(config) else { return };
    let tb = start(opts);
    let rt = runtime();
    rt.block_on(async {
        let c = owned_client(&tb).await;
        let snap = local.store().snapshot();
        let mut experts = Vec::new();
        for e in snap.iter() {
            let e = e.expect("expert");
            let meta = local.store().meta(e.id()).expect("meta");
            experts.push(NewExpert {
                key: e.key().to_vec(),
                layers: (0..e.n_layers())
                    .map(|l| AdapterPair {
                        a: e.a(l).to_vec(),
                        b: e.b(l).to_vec(),
                    })
                    .collect(),
                provenance: meta.provenance,
            });
        }
        c.insert(experts).await.expect("insert");

        let remote = c
            .local_engine(
                &dir.path().join("empty"),
                Backbone::locate_and_load(
                    Some(&model),
                    WeightFormat::F32,
                    &candle_core::Device::Cpu,
                )
                .expect("model"),
            )
            .expect("engine");
        assert!(remote.store().is_empty());
        let opts = AskOptions::default();
        for f in &facts {
            let want = local.ask(&f.prompt, &opts).expect("local ask");
            let got = c.ask(&remote, &f.prompt, &opts).await.expect("cluster ask");
            assert_eq!(got.text, f.answer, "{:?}", f.prompt);
            assert_eq!(got.tokens, want.tokens);
            assert_eq!(got.selected.len(), 1);
            let scores = |s: &[(u64, f32)]| s.iter().map(|x| x.1).collect::<Vec<_>>();
            assert_eq!(scores(&got.selected), scores(&want.selected), "rule scores");
        }
        let facts_cached = c.cached_fact_queries();
        assert!(facts_cached >= 1, "no prompt query cached");
        let bare_opts = AskOptions {
            use_experts: false,
            ..AskOptions::default()
        };
        for p in [
            "What is the capital of France?",
            "What is the secret code of Morvath?",
        ] {
            let bare = local.ask(p, &bare_opts).expect("bare");
            let embedded = local.ask(p, &opts).expect("local ask");
            assert!(
                embedded.selected.is_empty(),
                "embedded engine selected for {p:?}"
            );
            let got = c.ask(&remote, p, &opts).await.expect("cluster ask");
            assert!(
                got.selected.is_empty(),
                "an expert was selected for {p:?}: {:?}",
                got.selected
            );
            assert_eq!(
                got.tokens, bare.tokens,
                "{p:?} through the cluster differs from the bare backbone"
            );
        }
        // Asked again: the prompts' queries come from the client's cache.
        let again = c
            .ask(&remote, &facts[0].prompt, &opts)
            .await
            .expect("cluster ask");
        assert_eq!(again.text, facts[0].answer);
        assert!(c.cached_fact_queries() >= facts_cached);
    });
}

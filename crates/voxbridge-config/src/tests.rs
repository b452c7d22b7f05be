//! End-to-end tests: text -> parse -> validate -> TOML -> hash.

use crate::*;

/// The example from the design note, every key written.
const FULL: &str = r#"
name = "pretrain-sim-small"
description = "free text"
[data]
manifest = "data-manifests/sim-small-seed0.toml"
train_subjects = [2, 3, 4, 5, 6, 7, 8]
eval_subjects = [1]
sessions = 1
average_test_repeats = true
[train]
seed = 0
epochs = 10
batch_size = 42
max_steps = 100
samples_per_epoch = 3000
mixup_pct = 0.5
prior_scale = 10.0
clip_scale = 2.0
new_subject_bias = "fresh"
[optim]
lr = 3e-4
weight_decay = 1e-2
[checkpoint]
url = "runs/pretrain"
keep_last = 2
keep_every = 0
[model]
family = "mindeye2"
hidden = 256
blocks = 2
dropout = 0.1
backbone = "corrected-residual"
prior = false
prior_depth = 2
prior_dim_head = 16
prior_timesteps = 50
[eval]
ways = 100
loops = 10
every_epochs = 5
prior_steps = 0
mind_reader_batch = 200

[compute]
device = "cuda:1"
precision = "bf16"
"#;

/// Only the required keys (lines 1-4); tests append sections from line 5 on.
const MINIMAL: &str = "name = \"t\"\n[data]\nmanifest = \"m.toml\"\ntrain_subjects = [1]\n";

fn load(text: &str) -> Result<ExperimentConfig, ConfigError> {
    parse_experiment(text, "a.toml")?.validate("a.toml", Some(text))
}

fn problems(text: &str) -> Vec<Problem> {
    match load(text) {
        Err(ConfigError::Invalid { file, problems }) => {
            assert_eq!(file, "a.toml");
            problems
        }
        other => panic!("expected validation problems, got {other:?}"),
    }
}

#[test]
fn full_example_is_read_exactly() {
    let config = load(FULL).unwrap();
    let expected = ExperimentConfig {
        name: "pretrain-sim-small".into(),
        description: Some("free text".into()),
        data: DataConfig {
            manifest: "data-manifests/sim-small-seed0.toml".into(),
            train_subjects: vec![2, 3, 4, 5, 6, 7, 8],
            eval_subjects: vec![1],
            sessions: SessionSelection::First(1),
            average_test_repeats: true,
        },
        train: TrainConfig {
            seed: 0,
            epochs: 10,
            batch_size: 42,
            max_steps: Some(100),
            samples_per_epoch: Some(3000),
            mixup_pct: 0.5,
            prior_scale: 10.0,
            clip_scale: 2.0,
            blur_scale: 0.5,
            init_from: None,
            new_subject_bias: NewSubjectBias::Fresh,
        },
        optim: OptimConfig { lr: 3e-4, weight_decay: 1e-2 },
        checkpoint: CheckpointConfig { url: Some("runs/pretrain".into()), keep_last: 2, keep_every: 0, every_steps: 0 },
        model: ModelConfig {
            family: ModelFamily::MindEye2,
            hidden: 256,
            blocks: 2,
            dropout: 0.1,
            backbone: BackboneKind::CorrectedResidual,
            prior: false,
            prior_depth: 2,
            prior_dim_head: 16,
            prior_timesteps: 50,
            low_level: false,
        },
        eval: EvalConfig { ways: 100, loops: 10, every_epochs: 5, prior_steps: 0, mind_reader_batch: 200 },
        compute: ComputeConfig { device: DeviceSpec::Cuda(1), precision: Precision::Bf16 },
    };
    assert_eq!(config, expected);
}

#[test]
fn defaults_are_filled_in() {
    let config = load(MINIMAL).unwrap();
    assert_eq!(config.description, None);
    assert_eq!(config.data.eval_subjects, vec![1], "eval defaults to train subjects");
    assert_eq!(config.data.sessions, SessionSelection::All);
    assert!(config.data.average_test_repeats);
    assert_eq!(
        config.train,
        TrainConfig {
            seed: 0,
            epochs: 150,
            batch_size: 42,
            max_steps: None,
            samples_per_epoch: None,
            mixup_pct: 0.33,
            prior_scale: 30.0,
            clip_scale: 1.0,
            blur_scale: 0.5,
            init_from: None,
            new_subject_bias: NewSubjectBias::CopyFirstPretrainedSubject,
        }
    );
    assert_eq!((config.model.hidden, config.model.blocks, config.model.prior), (4096, 4, true));
    assert_eq!(
        config.eval,
        EvalConfig { ways: 300, loops: 30, every_epochs: 0, prior_steps: 20, mind_reader_batch: 300 }
    );
    assert_eq!(config.optim, OptimConfig { lr: 3e-4, weight_decay: 1e-2 });
    assert_eq!(config.checkpoint, CheckpointConfig { url: None, keep_last: 2, keep_every: 0, every_steps: 0 });
    assert_eq!(config.model.family, ModelFamily::MindEye2);
    // Every default is written out in the saved config.
    let saved = config.to_toml();
    for key in ["epochs = 150", "batch_size = 42", "sessions = \"all\"", "family = \"mindeye2\""] {
        assert!(saved.contains(key), "missing {key:?} in\n{saved}");
    }
}

#[test]
fn sessions_all_and_count() {
    let all = load(&format!("{MINIMAL}sessions = \"all\"\n")).unwrap();
    assert_eq!(all.data.sessions, SessionSelection::All);
    let one = load(&format!("{MINIMAL}sessions = 1\n")).unwrap();
    assert_eq!(one.data.sessions, SessionSelection::First(1));
}

/// Validate `text`, expect exactly one problem, return it.
fn single_problem(text: &str) -> Problem {
    let mut found = problems(text);
    assert_eq!(found.len(), 1, "{text}\n{found:?}");
    found.remove(0)
}

/// Check field, `(line, column)` and that the message contains `words`.
fn assert_problem(text: &str, field: &str, at: Option<(usize, usize)>, words: &str) {
    let p = single_problem(text);
    assert_eq!(p.field, field, "{text}");
    assert_eq!(p.line.zip(p.column), at, "{text}\n{p:?}");
    assert!(p.message.contains(words), "{text}\n{}", p.message);
}

#[test]
fn name_and_manifest_rules() {
    let no_name = "[data]\nmanifest = \"m\"\ntrain_subjects = [1]\n";
    assert_problem(no_name, "name", None, "is missing");
    let bad_name = MINIMAL.replace("\"t\"", "\"Bad Name\"");
    assert_problem(&bad_name, "name", Some((1, 1)), "contains 'B', ' ', 'N'");
    // A missing key points at its table header.
    let no_manifest = "name = \"t\"\n[data]\ntrain_subjects = [1]\n";
    assert_problem(no_manifest, "data.manifest", Some((2, 2)), "is missing");
    let ftp = MINIMAL.replace("m.toml", "ftp://m");
    assert_problem(&ftp, "data.manifest", Some((3, 1)), "scheme `ftp://`");
}

#[test]
fn subject_and_session_rules() {
    // Lines 1-3 are fixed, so `body` starts on line 4. Element problems point at the element.
    #[rustfmt::skip]
    let cases = [
        ("", "data.train_subjects", (2, 2), "is missing"),
        ("train_subjects = []", "data.train_subjects", (4, 1), "is empty"),
        ("train_subjects = [1, 9]", "data.train_subjects", (4, 22), "subject 9 is out of"),
        ("train_subjects = [0]", "data.train_subjects", (4, 19), "subject 0 is out of"),
        ("train_subjects = [3, 3]", "data.train_subjects", (4, 22), "listed more than once"),
        ("train_subjects = [1]\neval_subjects = []", "data.eval_subjects", (5, 1), "is empty"),
        ("train_subjects = [1]\neval_subjects = [-1]", "data.eval_subjects", (5, 18), "-1 is out"),
        ("train_subjects = [1]\nsessions = 0", "data.sessions", (5, 1), "0 is too small"),
        ("train_subjects = [1]\nsessions = \"most\"", "data.sessions", (5, 1), "\"most\" is not"),
    ];
    for (body, field, at, words) in cases {
        let text = format!("name = \"t\"\n[data]\nmanifest = \"m.toml\"\n{body}\n");
        assert_problem(&text, field, Some(at), words);
    }
}

#[test]
fn numeric_and_choice_rules() {
    // Each case is `[section]` on line 5 and `key = value` on line 6.
    #[rustfmt::skip]
    let cases = [
        ("train", "seed = -1", "-1 is too small"),
        ("train", "epochs = 0", "0 is too small: it must be at least 1"),
        ("train", "batch_size = 0", "0 is too small: it must be at least 1"),
        ("train", "max_steps = 0", "leave it out to train for all epochs"),
        ("optim", "lr = 0", "0 is not allowed: it must be a finite number greater than 0"),
        ("optim", "lr = nan", "NaN is not allowed"),
        ("optim", "lr = -inf", "-inf is not allowed"),
        ("optim", "weight_decay = -0.1", "-0.1 is not allowed: it must be a finite number >= 0"),
        ("checkpoint", "url = \"http://x\"", "unsupported scheme `http://`"),
        ("checkpoint", "keep_last = 1", "may still be being written when an older one"),
        ("checkpoint", "keep_every = -5", "(0 turns it off)"),
        ("model", "family = \"MindEye2\"", "not a known model family"),
        ("model", "family = \"mindreader\"", "cannot be trained yet; trainable families: `mindeye2`"),
        ("model", "family = \"ridge\"", "(ridge baselines: `voxbridge ridge`)"),
    ];
    for (section, line, words) in cases {
        let text = format!("{MINIMAL}[{section}]\n{line}\n");
        let key = line.split(' ').next().unwrap_or_default();
        assert_problem(&text, &format!("{section}.{key}"), Some((6, 1)), words);
    }
}

#[test]
fn batch_size_must_cover_every_subject_in_multi_subject_mode() {
    let text = "name = \"t\"\n[data]\nmanifest = \"m\"\ntrain_subjects = [1, 2, 3]\n\
                [train]\nbatch_size = 2\n";
    let found = problems(text);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].field, "train.batch_size");
    assert_eq!((found[0].line, found[0].column), (Some(6), Some(1)));
    assert_eq!(
        found[0].message,
        "2 is smaller than the 3 training subjects: in multi-subject mode each subject gets \
         batch_size / 3 = 0 samples per batch, so batch_size must be at least 3"
    );
    // One subject: any batch size >= 1 is fine.
    assert!(load(&format!("{MINIMAL}[train]\nbatch_size = 1\n")).is_ok());
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = "name = \"Bad\"\n[data]\ntrain_subjects = [1, 2, 2]\n[train]\nbatch_size = 1\n\
                [checkpoint]\nkeep_last = 1\n";
    let err = load(text).unwrap_err();
    let ConfigError::Invalid { problems, .. } = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["name", "data.manifest", "data.train_subjects", "checkpoint.keep_last"],
        "batch_size is only checked against a valid subject list"
    );
    let rendered = err.to_string();
    let lines: Vec<&str> = rendered.lines().collect();
    assert_eq!(lines.len(), 4, "{rendered}");
    assert!(lines[0].starts_with("a.toml:1:1: name: `Bad` contains 'B'"), "{rendered}");
    assert!(lines[1].starts_with("a.toml:2:2: data.manifest: is missing"), "{rendered}");
    assert_eq!(lines[2], "a.toml:3:25: data.train_subjects: subject 2 is listed more than once");
    assert!(lines[3].starts_with("a.toml:7:1: checkpoint.keep_last: 1 is too small"), "{rendered}");
}

#[test]
fn without_text_problems_have_no_location() {
    let raw = parse_experiment("[train]\nepochs = 0\n", "a.toml").unwrap();
    let Err(ConfigError::Invalid { problems, .. }) = raw.validate("a.toml", None) else {
        panic!("expected Invalid");
    };
    assert_eq!(problems.len(), 4);
    assert!(problems.iter().all(|p| p.line.is_none() && p.column.is_none()));
}

#[test]
fn round_trip_through_toml() {
    for text in [FULL, MINIMAL] {
        let config = load(text).unwrap();
        let saved = config.to_toml();
        assert_eq!(load(&saved).unwrap(), config, "{saved}");
        // The derived Deserialize reads the saved form directly too.
        assert_eq!(toml::from_str::<ExperimentConfig>(&saved).unwrap(), config);
    }
}

#[test]
fn hash_is_stable_and_tracks_changes() {
    let config = load(FULL).unwrap();
    let hash = config.config_hash();
    assert_eq!(hash.len(), 64);
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(load(FULL).unwrap().config_hash(), hash);
    assert_eq!(load(&config.to_toml()).unwrap().config_hash(), hash);
    // Comments and layout do not matter; the values do.
    let reformatted = FULL.replace("seed = 0", "seed   =   0   # same value");
    assert_eq!(load(&reformatted).unwrap().config_hash(), hash);
    // Writing a default out explicitly gives the same resolved config.
    let minimal = load(MINIMAL).unwrap().config_hash();
    assert_eq!(load(&format!("{MINIMAL}[train]\nepochs = 150\n")).unwrap().config_hash(), minimal);

    let mut changed = config.clone();
    changed.train.seed = 1;
    assert_ne!(changed.config_hash(), hash);
    let mut changed = config;
    changed.data.sessions = SessionSelection::All;
    assert_ne!(changed.config_hash(), hash);
}

#[test]
fn load_experiment_reads_files_and_names_them() {
    let dir = std::env::temp_dir().join(format!("voxbridge-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, FULL).unwrap();
    assert_eq!(load_experiment(&good).unwrap(), load(FULL).unwrap());

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, format!("{MINIMAL}[optim]\nlr = -1\n")).unwrap();
    let message = load_experiment(&bad).unwrap_err().to_string();
    assert!(message.starts_with(&format!("{}:6:1: optim.lr: -1", bad.display())), "{message}");

    let missing = dir.join("missing.toml");
    let err = load_experiment(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
    // The OS error once, also through an error chain (`{:#}`, as the CLI prints errors).
    let mut chained = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chained = format!("{chained}: {cause}");
        source = cause.source();
    }
    assert_eq!(chained.matches("No such file").count(), 1, "{chained}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn word_choices_and_fine_tune_rules_are_checked() {
    let text = format!(
        "{}[train]\nnew_subject_bias = \"zero\"\nmixup_pct = 1.5\n[model]\nbackbone = \"fixed\"\ndropout = 1.0\n",
        MINIMAL
    );
    let found = problems(&text);
    let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["train.mixup_pct", "train.new_subject_bias", "model.dropout", "model.backbone"]);
    assert!(found[1].message.contains("`copy-first-pretrained-subject`, `fresh`"), "{}", found[1].message);
    assert_eq!(found[1].line, Some(6));

    let multi =
        "name = \"t\"\n[data]\nmanifest = \"m.toml\"\ntrain_subjects = [1, 2]\n[train]\ninit_from = \"runs/p\"\n";
    let found = problems(multi);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].field, "train.init_from");
    assert!(found[0].message.contains("one new subject"), "{}", found[0].message);
}

#[test]
fn compute_problems_name_the_field_and_the_choices() {
    let problems = problems(&format!("{MINIMAL}\n[compute]\ndevice = \"gpu\"\nprecision = \"fp16\"\n"));
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["compute.device", "compute.precision"]);
    assert!(problems[0].message.contains("cpu, cuda, cuda:N, wgpu"), "{}", problems[0].message);
    assert!(problems[1].message.contains("`fp32`, `bf16`"), "{}", problems[1].message);
    assert!(problems.iter().all(|p| p.line.is_some()), "{problems:?}");
}

#[test]
fn compute_defaults_to_the_cpu_in_f32_and_old_resolved_configs_read() {
    let config = load(MINIMAL).unwrap();
    assert_eq!(config.compute, ComputeConfig { device: DeviceSpec::Cpu, precision: Precision::Fp32 });
    // A run directory's config.toml written before `[compute]` existed.
    let old = config.to_toml().replace("[compute]\ndevice = \"cpu\"\nprecision = \"fp32\"\n", "");
    assert!(!old.contains("[compute]"), "{old}");
    let reread: ExperimentConfig = toml::from_str(&old).unwrap();
    assert_eq!(reread, config);
}

#[test]
fn the_device_is_not_part_of_a_runs_identity_but_precision_is() {
    let config = load(MINIMAL).unwrap();
    let on_gpu =
        ExperimentConfig { compute: ComputeConfig { device: DeviceSpec::Cuda(2), ..config.compute }, ..config.clone() };
    assert_eq!(on_gpu.config_hash(), config.config_hash());
    let in_bf16 =
        ExperimentConfig { compute: ComputeConfig { precision: Precision::Bf16, ..config.compute }, ..config.clone() };
    assert_ne!(in_bf16.config_hash(), config.config_hash());
    let keys: Vec<String> = training_changes(&config, &on_gpu).into_iter().map(|c| c.key).collect();
    assert!(keys.is_empty(), "{keys:?}");
    let keys: Vec<String> = training_changes(&config, &in_bf16).into_iter().map(|c| c.key).collect();
    assert_eq!(keys, ["compute.precision"]);
}

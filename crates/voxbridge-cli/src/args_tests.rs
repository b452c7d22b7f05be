//! Parsing of the typed options: accepted spellings and the choices listed on errors.

use clap::Parser;

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("voxbridge").chain(args.iter().copied()))
}

#[test]
fn typed_arguments_keep_their_spellings() {
    let Command::Data(DataCommand::Simulate(a)) = parse(&["data", "simulate", "--out", "o"]).unwrap().command else {
        panic!()
    };
    assert_eq!(a.preset, Preset::Small);
    let Command::Data(DataCommand::Simulate(a)) =
        parse(&["data", "simulate", "--out", "o", "--preset", "nsd-scale"]).unwrap().command
    else {
        panic!()
    };
    assert_eq!(a.preset.name(), "nsd-scale");
    let Command::Ridge(a) = parse(&["ridge", "--data", "m"]).unwrap().command else { panic!() };
    assert_eq!(a.sessions, Sessions::All);
    let Command::Ridge(a) = parse(&["ridge", "--data", "m", "--sessions", "2"]).unwrap().command else { panic!() };
    assert_eq!(a.sessions, Sessions::First(2));
    let Command::Train(a) = parse(&["train", "e.toml", "--resume", "auto"]).unwrap().command else { panic!() };
    assert_eq!(a.resume, Some(ResumeFrom::Auto));
    let Command::Train(a) = parse(&["train", "e.toml", "--resume", "s3://b/c"]).unwrap().command else { panic!() };
    assert_eq!(a.resume, Some(ResumeFrom::At("s3://b/c".into())));
    let Command::Bench(BenchCommand::Ckpt(a)) =
        parse(&["bench", "ckpt", "--url", "u", "--config", "P1", "--config", "P1-big"]).unwrap().command
    else {
        panic!()
    };
    assert_eq!(a.config, [Anchor::P1, Anchor::P1Big]);
    let Command::Data(DataCommand::ImportNsd(a)) = parse(&[
        "data",
        "import-nsd",
        "--subject",
        "1",
        "--betas",
        "b",
        "--wds",
        "w",
        "--targets",
        "t",
        "--out",
        "o",
        "--normalisation",
        "train-set",
    ])
    .unwrap()
    .command
    else {
        panic!()
    };
    assert_eq!(a.normalisation, Normalisation::TrainSet);
}

#[test]
fn wrong_values_list_the_choices() {
    for (args, choices) in [
        (&["data", "simulate", "--out", "o", "--preset", "huge"][..], "tiny, small, nsd-scale"),
        (&["demo", "--preset", "nsd-scale"], "tiny, small"),
        (&["ridge", "--data", "m", "--sessions", "some"], "`all` or a number of sessions"),
        (&["predict", "--checkpoint", "c", "--voxels", "v", "--out", "o", "--trials", "val"], "`test` or `train:N`"),
        (&["bench", "ckpt", "--url", "u", "--config", "P2"], "P1, P1-big"),
    ] {
        let err = parse(args).unwrap_err().to_string();
        assert!(err.contains(choices), "{args:?}: {err}");
    }
}

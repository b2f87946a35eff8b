"""The command line around the commands: options declared once with their defaults in --help, sweep's
help by --task, --model checked at once (a path or a hub id), --resume never creating --out, eval's
file names unique per model, and other libraries silenced unless --verbose."""
import argparse
import dataclasses
import re
import subprocess
import sys

import pytest

from hbfast import hub
from hbfast.cli import build_parser, main, output_stem
from hbfast.clip.run import ClipOptions
from hbfast.options import HelpFormatter, add_dataclass_arguments, from_args
from hbfast.quiet import ENVIRONMENT
from hbfast.train.config import TextOptions, TrainConfig
from testing import subprocess_env
from train_fixtures import tiny_bert, write_pairs_jsonl


def _subcommands(argv=()):
    parser = build_parser(argv)
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("task", ["text", "clip"])
def test_every_option_of_every_command_shows_its_default(task):
    commands = _subcommands(["sweep", "--task", task])
    assert {"eval", "train", "demo", "sweep", "train-clip", "encode", "search"} <= set(commands)
    for name, parser in commands.items():
        formatter = HelpFormatter(name)
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            text = formatter._get_help_string(action)
            assert "default" in text or "(required)" in text, f"hbfast {name} {action.option_strings[0]}: {text!r}"
        assert "--verbose" in parser.format_help()


def test_train_flags_are_the_dataclass_fields_with_their_defaults():
    args = build_parser(["train"]).parse_args(["train"])
    assert from_args(TrainConfig, args) == TrainConfig()
    assert from_args(TextOptions, args) == TextOptions()
    args = build_parser().parse_args(["train", "--no-bf16", "--no-progress", "--alpha", "0.25", "--prefixes",
                                 "--max-length", "64", "--batch-type", "X-Y", "--out", "o"])
    config, text = from_args(TrainConfig, args), from_args(TextOptions, args)
    assert (config.bf16, config.progress, config.alpha) == (False, False, 0.25)
    assert (config.batch_type, config.out) == ("X-Y", "o")
    assert (text.prefixes, text.max_length, text.model) == (True, 64, None)
    clip = build_parser().parse_args(["train-clip", "--data", "t.jsonl", "--text-model", "m"])
    assert (clip.lr, clip.temperature, clip.out, clip.dim) == (1e-4, 0.07, "hbfast-train-clip", 512)
    assert not hasattr(clip, "model") and not hasattr(clip, "prefixes")  # the text task's options, not train-clip's
    assert from_args(ClipOptions, clip) == ClipOptions(data="t.jsonl", text_model="m")


def test_options_module_checks_its_declarations():
    @dataclasses.dataclass
    class Opts:
        n: int = 3
    with pytest.raises(ValueError, match=r"has no options \['nope'\]"):
        add_dataclass_arguments(argparse.ArgumentParser(), TrainConfig, only=("nope",))
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Opts)  # a plain field is no option
    assert parser.parse_args([]) == argparse.Namespace()


def test_sweep_help_shows_only_its_task(capsys):
    def help_of(*argv):
        with pytest.raises(SystemExit) as done:
            main(["sweep", *argv, "--help"])
        assert done.value.code == 0
        return capsys.readouterr().out

    def flags(text):
        return set(re.findall(r"^  (--[a-z-]+)", text, flags=re.M))

    text, clip = help_of(), help_of("--task", "clip")
    assert {"--eval-data", "--model", "--prefixes"} <= flags(text) and "--text-model" not in flags(text)
    assert {"--text-model", "--xtd-images"} <= flags(clip) and not {"--eval-data", "--model"} & flags(clip)
    assert "--alpha" in flags(text) & flags(clip) and "--resume" not in flags(text) | flags(clip)
    assert "(default: 0,0.25,0.5,0.75,1)" in text and "(default: 0.0001)" in clip  # train-clip's lr
    assert help_of("--task=clip") == clip


def test_alpha_lists_are_checked(capsys):
    from hbfast.train.sweep import parse_alphas

    assert parse_alphas("0, 0.5,1") == [0.0, 0.5, 1.0]
    for text, why in (("0,0.5,0", "repeated: [0.0]"), ("0,nan", "outside [0, 1]: [nan]"), ("-0.1", "outside"),
                      (",", "got ','"), ("a", "comma-separated numbers")):
        with pytest.raises(ValueError, match="--alpha"):
            parse_alphas(text)
        with pytest.raises(ValueError) as e:
            parse_alphas(text)
        assert why in str(e.value)


@pytest.mark.parametrize("name, hub_shaped", [
    ("bert-base-uncased", True), ("sentence-transformers/all-MiniLM-L6-v2", True), ("runs/final", True),
    ("/abs/model", False), ("./model", False), ("../model", False), ("~/model", False), ("runs/a/final", False),
    ("model/", False), ("a\\b", False), ("org/..", False), ("-x", False),
])
def test_hub_id_shape(name, hub_shaped):
    assert hub.is_hub_id(name) is hub_shaped


def test_missing_model_path_is_an_error_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hub, "hub_unreachable", lambda timeout=3.0: pytest.fail("a path needs no hub"))
    missing = str(tmp_path / "no-such-model")
    for name, argv in ((missing, ["eval", "--model", missing]),
                       (missing, ["train", "--model", missing, "--out", str(tmp_path / "t")]),
                       ("./runs/final", ["train", "--model", "./runs/final", "--out", str(tmp_path / "t")]),
                       (missing, ["train-clip", "--data", "x.jsonl", "--text-model", missing,
                                  "--out", str(tmp_path / "c")])):
        assert main(argv) == 2
        assert f"error: model directory {name} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "c").exists()


def test_hub_ids_are_kept_for_online_use_and_refused_at_once_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "hub_unreachable", lambda timeout=3.0: None)  # online
    assert hub.check_models(["org/model", None]) is False  # a hub id, the hub reachable: not kept offline
    monkeypatch.setattr(hub, "hub_unreachable", lambda timeout=3.0: "hub.example cannot be reached (test)")
    assert main(["eval", "--model", "runs/final"]) == 2  # a relative path shaped like a hub id
    err = capsys.readouterr().err
    assert "model runs/final: no such local directory, and as a hub id it is not in the Hugging Face cache" in err
    assert "hub.example cannot be reached (test)" in err
    snapshot = tmp_path / "hub" / "models--org--model" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert hub.check_models(["org/model"]) is True  # cached: loaded offline, no retries


def test_resume_into_a_missing_directory_creates_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--resume", "--out", str(out), "--steps", "1"]) == 2
    assert f"--resume: the directory {out} does not exist" in capsys.readouterr().err
    assert not out.exists()
    from hbfast.train.checkpoint import check_resume_directory

    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_resume_directory(out)


def test_eval_file_names_are_unique_per_model(tmp_path):
    a, b = tmp_path / "runA" / "final", tmp_path / "runB" / "final"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    stem_a, stem_b = output_stem("xquad-r", str(a)), output_stem("xquad-r", str(b))
    assert stem_a != stem_b and stem_a.startswith("xquad-r_final-") and len(stem_a) == len("xquad-r_final-") + 8
    assert output_stem("xquad-r", str(a) + "/") == stem_a  # the same directory, however written
    assert output_stem("mlqa-r", None) == "mlqa-r_all-MiniLM-L6-v2"
    assert output_stem("xtd", "org/clip-model") == "xtd_org_clip-model"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    return tiny_bert(root / "bert", hidden=16, layers=1), write_pairs_jsonl(root / "pairs.jsonl"), root


def _train_output(tiny_run, name, *extra) -> tuple:
    model, data, root = tiny_run
    env = subprocess_env(HBFAST_CACHE=str(root / name / "cache"))
    for key in ENVIRONMENT:  # set in this process by the in-process runs of main()
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "hbfast", "train", "--model", str(model), "--data", str(data),
                           "--steps", "2", "--batch-size", "6", "--max-length", "16", "--out", str(root / name),
                           *extra],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def test_other_libraries_are_silent_unless_verbose(tiny_run):
    """hbfast's own bar (on stderr) and its result (on stdout), nothing else; --verbose lets the rest through."""
    out, err = _train_output(tiny_run, "quiet")
    assert [x for x in out.splitlines() if x.strip()][-1].startswith("trained 2 steps") and len(out.splitlines()) == 1
    bar = [x.strip() for x in err.replace("\r", "\n").splitlines() if x.strip()]
    assert bar and all(x.startswith("train hybrid:") for x in bar), bar
    out, err = _train_output(tiny_run, "verbose", "--verbose")
    assert "Loading weights" in err  # transformers' bar


def test_hub_probe_is_one_quick_connection(monkeypatch):
    import socket

    for key in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_unreachable() is None
    assert "127.0.0.1 cannot be reached" in hub.hub_unreachable()  # the port is closed now
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub.hub_unreachable() is None  # behind a proxy the libraries find out themselves
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_unreachable() == "HF_HUB_OFFLINE is set"

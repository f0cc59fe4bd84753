"""The root command: fast help (torch is not imported for it), one-line usage errors, and train flags that are
generated from the config dataclass."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from dsrnet.cli.main import COMMANDS, build_parser, main


def test_root_help_does_not_import_torch():
    code = (
        "import sys\nfrom dsrnet.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules, 'dsrnet --help imported torch'\nprint('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
    assert all(name in out.stdout for name in COMMANDS)


def test_import_dsrnet_is_light():
    code = "import sys, dsrnet\nassert not {'torch', 'torchvision', 'timm'} & set(sys.modules), sys.modules.keys()"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode == 0


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and "dsrnet 0.1.0 (torch " in capsys.readouterr().out


def test_every_config_field_is_a_typed_train_flag():
    from dsrnet.train.config import TrainConfig

    train = build_parser("train")._subparsers._group_actions[0].choices["train"]
    flags = {a.dest: a for a in train._actions}
    for f in fields(TrainConfig):
        assert f.name in flags, f"TrainConfig.{f.name} has no --{f.name.replace('_', '-')} flag"
        action = flags[f.name]
        if f.type.startswith(("int", "float", "str", "list", "dict")) and f.name != "resume":
            assert action.type is not None, f"--{f.name} is untyped"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--epochs", "two"], "bad value for epochs: 'two'"),
        (["train", "--schedule", "exp"], "bad value for schedule: 'exp'; fix: use one of step, cosine, linear"),
        (["eval", "--checkpoint", "x", "--test-subset-per-class", "0"], "test_subset_per_class"),
        (["bench", "--num-classes", "0"], "num classes"),
        (["bench", "--models", "resnet50", "--model-kwargs", '{"widths": [8, 8, 8, 8]}'], "DSRNet models only"),
        (["nope"], "invalid choice: 'nope'"),
        # an unknown flag of a command points at that command's help, not the root's
        (["train", "--epoch-count", "3"], "unrecognized arguments: --epoch-count 3; fix: see `dsrnet train --help`"),
        (["bench", "--models", "dsrnet50", "--out-dir", "FILE/sub"], "is a file"),
        (["reproduce", "--dataset", "cifar10", "--out-dir", "FILE/sub"], "is a file"),
    ],
)
def test_bad_values_are_one_line(argv, message, capsys, tmp_path):
    (tmp_path / "FILE").write_text("a file where a folder should be")
    argv = [str(tmp_path / a) if a.startswith("FILE") else a for a in argv]
    try:
        code = main([*argv, *(["--out-dir", str(tmp_path)] if argv[0] == "bench" and "--out-dir" not in argv else [])])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dsrnet: error: ") and err.count("\n") == 1 and message in err, err


def test_command_line_records_every_option_and_switches_that_are_off():
    """The ``command`` a results table records must rerun the same thing: ``--no-progress`` included."""
    import shlex

    from dsrnet.cli.common import command_line

    argv = ["reproduce", "--dataset", "cifar10", "--models", "dsrnet50", "resnet50", "--no-progress", "--epochs", "3"]
    parser = build_parser("reproduce")
    recorded = command_line(parser.parse_args(argv))
    assert "--no-progress" in recorded and "--epochs 3" in recorded and "--models dsrnet50 resnet50" in recorded
    assert "_negatable" not in recorded and "--quick" not in recorded  # a store_true left off is the default
    again = parser.parse_args(shlex.split(recorded)[1:])
    assert vars(again) == vars(parser.parse_args(argv))  # the recorded command parses back to the same run
    # Unset, --progress is the --config file's or on: what was used is what the table records.
    from dsrnet.cli.reproduce import _prepare

    unset = parser.parse_args(argv[:-3] + ["--epochs", "3"])
    assert "--progress" not in command_line(unset)
    assert "--progress" in shlex.split(_prepare(unset)["command"])


def test_predict_help_states_the_auto_backend_threshold():
    # The parser stays torch-free, so the number is written in the help: it must be the one predict uses.
    from dsrnet.infer import AUTO_BACKEND_MIN_IMAGES

    predict = build_parser("predict")._subparsers._group_actions[0].choices["predict"]
    help_ = next(a.help for a in predict._actions if a.dest == "backend")
    assert f"for {AUTO_BACKEND_MIN_IMAGES}+ images" in help_

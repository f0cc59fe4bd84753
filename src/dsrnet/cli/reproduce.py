"""``dsrnet reproduce`` and ``dsrnet ablate``: flags -> :func:`dsrnet.paper.runner.reproduce` /
:func:`~dsrnet.paper.runner.ablate` -> the paper-layout table on stdout, progress on stderr."""

from __future__ import annotations

import argparse
import logging

from dsrnet.cli.common import command_line, parse_model_kwargs, set_threads
from dsrnet.device import PRECISIONS


def _common_args(p: argparse.ArgumentParser) -> None:
    from dsrnet.paper.runner import DATASET_CHOICES, QUICK  # configure() imports the runner anyway

    p.add_argument("--dataset", required=True, choices=DATASET_CHOICES, help="dataset of Table 2 (cifar10), 3 "
                   "(cifar100) or 4 (stl10)")  # fmt: skip
    p.add_argument("--config", metavar="YAML", default=None,
                   help="YAML file of `dsrnet train` settings (e.g. fast, a shipped recipe file, or a path) for every model; the flags "
                   "here override it; its model is ignored (--models picks them), its dataset must be --dataset's, "
                   "and it may not set model_kwargs, out_dir, resume, init_weights or a Triton dwconv")  # fmt: skip
    p.add_argument(
        "--recipe", choices=("paper", "fast"), default=None, help="training recipe (dsrnet train) (default: paper)"
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument(
        "--stem",
        choices=("paper", "cifar"),
        default="paper",
        help="stem of every model: paper = Table 1 (7x7/2 conv + max-pool), cifar = 3x3/1 conv",
    )
    p.add_argument(
        "--data-dir", default=None, help="datasets folder (default: $DSRNET_DATA or ~/.cache/dsrnet/data)"
    )
    p.add_argument(
        "--download", action="store_true", default=None, help="download the dataset if missing (default: off)"
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (training and timing) (default: the "
                   "--config file's, else auto)")  # fmt: skip
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="training precision (default: the recipe's; timing is always fp32)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="training seed (also picks the --subset-per-class images) (default: 0)"
    )
    p.add_argument("--subset-per-class", type=int, default=None, help="train on this many images per class")
    p.add_argument(
        "--test-subset-per-class", type=int, default=None, help="test on this many images per class"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny end-to-end run: {QUICK['subset_per_class']} train / {QUICK['test_subset_per_class']} "
        f"test images per class, {QUICK['epochs']} epoch, batch {QUICK['batch_size']}, one timed call; "
        "writes under results/quick/ unless --out-dir is given",
    )
    p.add_argument("--out-dir", default=None, help="output folder (default: results/<dataset>[/ablate])")
    p.add_argument(
        "--bench-batch-size", type=int, default=None, help="timed batch size (default: 128, the paper's)"
    )
    p.add_argument(
        "--bench-warmup", type=int, default=None, help="untimed calls (default: bench's per device)"
    )
    p.add_argument(
        "--bench-repeats", type=int, default=None, help="timed calls (default: bench's per device)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--model-kwargs",
        default=None,
        metavar="JSON",
        help="extra DSRNet constructor arguments (JSON object), e.g. tiny widths for a smoke test",
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on a terminal (default: the --config file's, else on)")  # fmt: skip


def configure(name: str, p: argparse.ArgumentParser) -> None:
    from dsrnet.models import PAPER_COMPARISON
    from dsrnet.paper.runner import ablation_variants

    _common_args(p)
    if name == "reproduce":
        p.description = (
            "Train every model of the paper's comparison with one recipe, time it, and write the paper's table "
            "(ours beside the paper's numbers), CSV, JSON and figures to results/<dataset>/. Resumable."
        )
        p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                       help="subset of the comparison (or any registered model) (default: " + " ".join(PAPER_COMPARISON)
                       + "; with --report-only: every finished run in --out-dir)")  # fmt: skip
        p.add_argument("--report-only", action="store_true",
                       help="train and time nothing: rewrite the tables and figures from the finished, timed runs "
                       "already in --out-dir with these settings (e.g. runs assembled from GPU calls)")  # fmt: skip
        p.set_defaults(func=_cmd_reproduce)
    else:
        variants = ablation_variants("paper")
        names = [v.name for v in variants] + ["stem_paper"]
        p.description = (
            "Train DSRNet-50 variants on one recipe and tabulate error, latency and parameters. Variants: "
            + "; ".join(f"{v.name} = {v.tests}" for v in variants)
        )
        p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                       help=f"subset of: {', '.join(names)} (stem_cifar with --stem paper, stem_paper with --stem "
                       "cifar; default: all)")  # fmt: skip
        p.add_argument("--report-only", action="store_true",
                       help="train and time nothing: rewrite the table and figure from the variants' finished, "
                       "timed runs already in --out-dir with these settings")  # fmt: skip
        p.set_defaults(func=_cmd_ablate)


#: TrainConfig fields a --config file may not set: reproduce/ablate set them per model (or they fit one model only).
PER_MODEL_KEYS = ("model_kwargs", "out_dir", "resume", "init_weights")


def _config_file(path: str, dataset: str) -> dict:
    """The file's settings for every model: a recipe file such as the shipped fast.yaml names the model it was written
    for, which the comparison replaces by each of its models (logged), and a dataset, which must be this one."""
    from dsrnet.errors import DsrnetError
    from dsrnet.train.config import load_config_file

    values = load_config_file(path)
    if values.pop("model", None) is not None:
        logging.getLogger("dsrnet.paper").info(f"config file {path}: its model is ignored, --models picks them")
    if values.pop("dataset", dataset) != dataset:
        raise DsrnetError(f"config file {path} is for another dataset than --dataset {dataset}; fix: drop its "
                          f"dataset line or pass its dataset")  # fmt: skip
    owned = [k for k in PER_MODEL_KEYS if k in values]
    if values.get("dwconv", "torch") != "torch":  # the Triton kernels exist for depthwise convs only
        owned.append("dwconv")
    if owned:
        raise DsrnetError(
            f"config file {path} sets {', '.join(owned)}, which every model of the comparison cannot share; fix: "
            f"remove it from the file (reproduce/ablate set models, data and folders themselves; --model-kwargs "
            f"for DSRNet)"
        )
    return values


def _prepare(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    flags = {
        "recipe": args.recipe,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "data_dir": args.data_dir,
        "download": args.download,
        "device": args.device,
        "precision": args.precision,
        "seed": args.seed,
        "subset_per_class": args.subset_per_class,
        "test_subset_per_class": args.test_subset_per_class,
        "progress": args.progress,
    }
    # Precedence as in `dsrnet train`: flags > --quick's sizes > --config file > the recipe's defaults.
    from dsrnet.paper.runner import QUICK

    from_file = _config_file(args.config, args.dataset) if args.config else {}
    train = {**from_file, **(QUICK if args.quick else {}), **{k: v for k, v in flags.items() if v is not None}}
    # Flags left unset leave a --config file's values alone (as in `dsrnet train`), then take these defaults; the
    # recorded command spells out what was used.
    for key, default in (("recipe", "paper"), ("seed", 0), ("device", "auto"), ("progress", True)):
        train.setdefault(key, default)
    args.recipe, args.seed, args.device, args.progress = (train[k] for k in ("recipe", "seed", "device", "progress"))
    return {
        "stem": args.stem,
        "out": args.out_dir,
        "train": train,
        "bench_settings": {
            "batch_size": args.bench_batch_size, "warmup": args.bench_warmup, "repeats": args.bench_repeats
        },
        "model_kwargs": parse_model_kwargs(args.model_kwargs),
        "quick": args.quick,
        "command": command_line(args),
    }  # fmt: skip


def _log_files(result: dict) -> int:
    for path in result["files"]:
        logging.getLogger("dsrnet.paper").info(f"wrote {path}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from dsrnet.models import PAPER_COMPARISON
    from dsrnet.paper.runner import report_finished, reproduce

    if args.report_only:  # the finished runs of --models in --out-dir, or all of them
        result = report_finished(args.dataset, models=args.models, **_prepare(args))
    else:
        args.models = args.models or list(PAPER_COMPARISON)  # spelled out in the recorded command
        result = reproduce(args.dataset, models=args.models, **_prepare(args))
    print(result["table"], end="")
    return _log_files(result)


def _cmd_ablate(args: argparse.Namespace) -> int:
    from dsrnet.paper.runner import ablate

    result = ablate(args.dataset, variants=args.variants, report_only=args.report_only, **_prepare(args))
    print((result["files"][0]).read_text(), end="")  # table.md
    return _log_files(result)

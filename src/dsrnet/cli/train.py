"""``dsrnet train``, ``eval`` and ``predict``: flags -> one library call -> output.

``train``'s flags are generated from :class:`~dsrnet.train.config.TrainConfig`'s fields (every field is a flag, typed
as the field is; a test checks it), so the command line, YAML files and the library accept the same settings.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from dsrnet.cli.common import one_of, typed
from dsrnet.device import PRECISIONS
from dsrnet.errors import DsrnetError
from dsrnet.run.rundir import RunDir

#: Help of each TrainConfig field; the recipe's default is appended where the recipe sets the field.
FIELD_HELP = {
    "model": "model name (default: dsrnet50)",
    "model_kwargs": "model constructor arguments as JSON, e.g. '{\"widths\": [8, 16, 32, 64]}' (default: {})",
    "dataset": "dataset (default: cifar10)",
    "data_dir": "folder holding the datasets (default: $DSRNET_DATA or ~/.cache/dsrnet/data)",
    "download": "download the dataset if missing (default: off)",
    "recipe": "training recipe; fills every unset value (default: paper)",
    "epochs": "training epochs",
    "batch_size": "global batch size (all processes)",
    "lr": "initial (step) / peak (cosine, linear) learning rate; unset, the recipe's, scaled linearly when "
    "--batch-size differs from the recipe's (a given --lr is used as is)",
    "weight_decay": "L2 weight decay",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum",
    "label_smoothing": "label smoothing of the training loss",
    "schedule": "learning-rate schedule: step (x0.1 at each milestone), cosine or linear decay to zero, per step "
    "after the warm-up",
    "milestones": "epochs at which the step schedule divides the lr by 10 (default: 50%% and 75%% of --epochs)",
    "warmup_epochs": "linear learning-rate warm-up length",
    "bn_bias_weight_decay": "apply weight decay to BatchNorm parameters and biases too",
    "drop_last": "drop each epoch's incomplete last batch",
    "seed": "seed of initialisation, shuffling and augmentation, and of which images the subsets take (default: 0)",
    "device": "auto (cuda if available), cpu, cuda or cuda:N (default: auto)",
    "precision": "fp32, bf16 (autocast) or fp16 (autocast + grad scaling)",
    "channels_last": "NHWC memory format",
    "compile": "torch.compile the model",
    "compile_mode": "torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, "
    "max-autotune-no-cudagraphs (speed only)",
    "sync_bn": "SyncBatchNorm across DDP processes (CUDA only) (default: off)",
    "out_dir": "run folder (default: runs/<dataset>/<model>-<recipe>-seed<seed>)",
    "resume": "continue a run: from --out-dir's checkpoint.pt (a folder without one yet: the run starts, so one "
    "command line serves every restart), or from the given checkpoint or run folder; the saved "
    "settings are used (default: off)",
    "subset_per_class": "train on this many images per class (quick runs) (default: all)",
    "test_subset_per_class": "test on this many images per class, picked by --seed (quick runs; runs of other "
    "seeds are scored on other images) (default: all)",
    "checkpoint_every": "write checkpoint.pt every this many epochs (and after the last) (default: 1)",
    "eval_every": "score the test set after every this many epochs (and always after the last); 0 = after the "
    "last only; the training is the same either way (default: 1)",
    "pad_fill": "what the random crop pads with: zero (black pixels), mean (the mean colour, 0 after "
    "normalisation) or reflect (the image mirrored at its borders)",
    "zero_init_residual": "start each residual block as an identity (last BatchNorm scale zeroed), for the models "
    "with residual blocks",
    "cutout": "Cutout: side in pixels of one square per training image, centre anywhere in the image, set to the "
    "mean colour after the crop and flip (DeVries & Taylor 2017 use 16 on CIFAR-10); 0 = off",
    "dw_weight_decay": "apply weight decay to the depthwise conv weights too (--no-dw-weight-decay exempts them, "
    "as MobileNets advise)",
    "ema_decay": "above 0: evaluate, checkpoint and export an exponential moving average of the weights with this "
    "decay per step (e.g. 0.995); the optimised weights' test metrics are logged as raw_test_*; 0 = off",
    "deadline": "Unix time (s) by which training must end: it stops after the epoch whose successor would end later, "
    "marks final.json stopped_early (truncated schedule, not a full result); resume to complete (default: off)",
    "deadline_rule": "with --deadline: epoch (stop when the next epoch would end past it) or schedule (also stop, "
    "from the second epoch on, as soon as the rest of the schedule at the last epoch's pace would end past it) "
    "(default: epoch)",
    "dwconv": "what computes the depthwise 3x3 convs: torch (PyTorch's conv), shifts (nine shifted "
    "multiply-adds that --compile fuses with the BatchNorm + ReLU around them; slower without it), triton (the NHWC Triton "
    "kernels, forward and backward; same numbers within float tolerance; models with depthwise convs only; "
    "PyTorch fallback without CUDA) or triton_bn_relu (those kernels with each DSR block's BatchNorm + ReLU "
    "before the depthwise conv inside them; dsrnet* only, not with --sync-bn) (default: torch)",
    "pointwise": "what computes the plain 1x1 convs: conv (nn.Conv2d) or matmul (a matmul over the channels-last "
    "pixels, so that --compile sees the backward's GEMMs too; same parameters, checkpoints and numbers within "
    "float tolerance) (default: conv)",
    "init_weights": "fine-tune: start from a weights tag (e.g. dsrnet50_cifar.c10), a .safetensors file or a "
    "dsrnet train checkpoint / run folder of the same model; a classifier of another class count is "
    "re-initialised (default: random initialisation)",
    "progress": "progress bar on a terminal (default: on)",
    "tensorboard": "write TensorBoard events to <out-dir>/tb when tensorboard is installed (default: on)",
}


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def _recipe_help(key: str) -> str:
    from dsrnet.train.config import _CPU_FALLBACK, RECIPES

    if key not in RECIPES["paper"]:
        return ""
    vals = ", ".join(f"{r} {_fmt(RECIPES[r][key])}" for r in RECIPES)
    extra = f" on CUDA; {_fmt(_CPU_FALLBACK[key])} on CPU" if key in _CPU_FALLBACK else ""
    return f" (default: recipe's: {vals}{extra})"


def _choices(name: str) -> tuple[str, ...] | None:
    from dsrnet.data import DATASETS, PAD_FILLS
    from dsrnet.models import list_models
    from dsrnet.train.config import COMPILE_MODES, DEADLINE_RULES, DWCONVS, POINTWISE, RECIPES, SCHEDULES

    return {
        "model": tuple(list_models()),
        "dataset": tuple(DATASETS),
        "recipe": tuple(RECIPES),
        "schedule": SCHEDULES,
        "precision": PRECISIONS,
        "pad_fill": PAD_FILLS,
        "dwconv": DWCONVS,
        "pointwise": POINTWISE,
        "compile_mode": COMPILE_MODES,
        "deadline_rule": DEADLINE_RULES,
    }.get(name)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from dsrnet.train.config import _KINDS, TrainConfig, _coerce

    S = argparse.SUPPRESS  # unset flags stay absent, so YAML values and recipe defaults can show through
    p.add_argument("--config", metavar="YAML", default=S,
                   help="YAML file of settings (keys = the long flag names), or a shipped recipe file by name: fast, "
                        "paper, cpu-smoke; flags given here override it")
    p.add_argument("--print-config", action="store_true", default=S,
                   help="print the resolved config as YAML and exit without training")  # fmt: skip
    for f in fields(TrainConfig):
        flag, kind = "--" + f.name.replace("_", "-"), _KINDS[f.name]
        help_ = FIELD_HELP[f.name] + _recipe_help(f.name)
        if f.name == "resume":
            p.add_argument(flag, nargs="?", const="auto", default=S, metavar="CHECKPOINT", help=help_)
        elif kind == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=S, help=help_)
        else:
            choices = _choices(f.name)
            if choices:
                convert = one_of(f.name, choices)
            else:
                elem = kind.removeprefix("list[").removesuffix("]")
                convert = typed(lambda v, name=f.name, elem=elem: _coerce(name, elem, v))
            if choices:
                help_ = f"{help_}; one of {', '.join(choices)}"
            nargs = "+" if kind.startswith("list") else None
            metavar = {"model_kwargs": "JSON", "milestones": "EPOCH", "data_dir": "DIR", "out_dir": "DIR"}.get(
                f.name, f.name.upper()
            )
            p.add_argument(flag, type=convert, nargs=nargs, default=S, metavar=metavar, help=help_)
    p.set_defaults(func=_cmd_train)


def configure(name: str, p: argparse.ArgumentParser) -> None:
    from dsrnet.export.backends import BACKENDS as ENGINES  # light: the engines load when used
    from dsrnet.train.config import _coerce

    backends = ("auto", *ENGINES, "fused")  # as dsrnet.infer.BACKENDS

    int_ = typed(lambda v: _coerce("batch_size", "int", v))
    if name == "train":
        p.description = (
            "Train a model on CIFAR-10/100 or STL-10 and write a run folder (config.yaml, metrics.jsonl, "
            "checkpoint.pt, final.json). Precedence: command-line flags > --config YAML > --recipe defaults. Under "
            "`torchrun --nproc_per_node N -m dsrnet train ...` it trains with DistributedDataParallel."
        )
        _add_train_flags(p)
    elif name == "eval":
        p.description = (
            "Evaluate a checkpoint on its dataset's test split; writes metrics.json, per_class.csv, confusion.csv "
            "and confusion.png to --out-dir."
        )
        p.add_argument("--checkpoint", required=True, metavar="MODEL",
                       help="what to evaluate: a run folder or its checkpoint.pt, a .safetensors weights file "
                       "(dsrnet export-weights), a weights tag such as dsrnet50_cifar.c10, or a file from `dsrnet "
                       "export` (e.g. model.int8.onnx)")  # fmt: skip
        p.add_argument("--data-dir", default=None, help="dataset folder (default: $DSRNET_DATA or "
                       "~/.cache/dsrnet/data)")  # fmt: skip
        p.add_argument("--download", action="store_true", help="download the dataset if missing")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--batch-size", type=int_, default=None,
                       help="evaluation batch size (default: 500 on a GPU, 32 on a CPU)")  # fmt: skip
        p.add_argument("--precision", type=one_of("precision", PRECISIONS), default="fp32",
                       help=f"inference precision: {', '.join(PRECISIONS)}")  # fmt: skip
        p.add_argument("--test-subset-per-class", type=typed(lambda v: _coerce("test_subset_per_class", "int", v)),
                       default=None, help="evaluate on this many images per class (default: all)")  # fmt: skip
        p.add_argument("--out-dir", default=None, help="output folder (default: <run folder>/eval for a run, "
                       "<file>.eval beside a file, <tag>.eval in the current folder for a weights tag)")  # fmt: skip
        p.add_argument("--backend", type=one_of("backend", backends), default=None,
                       help="inference engine: torch (any device), fused (a DSRNet in dsrnet.fuse's inference "
                       "form: BatchNorm folded, fused Triton kernels on CUDA) or a CPU engine (onnxruntime, "
                       "openvino, torch-compile; auto = the fastest installed); an ONNX file from `dsrnet export` "
                       f"(e.g. int8) needs a CPU engine; one of {', '.join(backends)} (default: torch; auto for an "
                       "ONNX file)")  # fmt: skip
        p.set_defaults(func=_cmd_eval)
    elif name == "predict":
        p.description = (
            "Classify image files of any size: the shorter side is resized to the model's input size and the "
            "centre cropped (the preprocessing stored with the model). Prints the top-k class names with "
            "probabilities."
        )
        p.add_argument("--checkpoint", default=None, metavar="MODEL",
                       help="what to classify with: a run folder or its checkpoint.pt, a .safetensors weights file "
                       "(dsrnet export-weights), a weights tag such as dsrnet50_cifar.c10, or a file from `dsrnet "
                       "export` (default: the shipped CIFAR-10 weights, dsrnet50_cifar.c10)")  # fmt: skip
        p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...) or folders of them")
        p.add_argument("--top-k", type=typed(lambda v: _coerce("top_k", "int", v)), default=5,
                       help="how many classes to print per image")  # fmt: skip
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--backend", type=one_of("backend", backends), default="auto",
                       help="inference engine: auto = on a CPU the fastest installed engine for exported files and "
                       "for 1000+ images (exporting costs seconds), else torch; fused = a DSRNet in dsrnet.fuse's "
                       "inference form (fused Triton kernels on CUDA); one of " + ", ".join(backends))
        p.set_defaults(func=_cmd_predict)


def config_from_args(args: argparse.Namespace):
    """The run config from parsed ``train`` flags: flags > ``--config`` YAML > recipe defaults; with
    ``--resume`` the checkpoint's saved config, to which the given flags may only add ``RESUME_MUTABLE``
    changes."""
    from dsrnet.train.config import _KINDS, TrainConfig, load_config_file, resume_config

    given = {k: v for k, v in vars(args).items() if k in _KINDS}
    from_file = load_config_file(args.config) if getattr(args, "config", None) else {}
    explicit = {**from_file, **given}
    resume = explicit.pop("resume", None)
    if resume is None or resume is False:
        return TrainConfig.from_recipe(**explicit)
    if resume is True or resume == "auto":  # the run folder these flags would train into
        fresh = TrainConfig.from_recipe(**explicit)
        run = RunDir(fresh.out_dir)
        if not run.holds_run:
            # Nothing to continue yet (a requeued job's first start, a run killed before its first checkpoint):
            # start it, so one command line serves every (re)start under torchrun --max-restarts or a scheduler;
            # a run killed before its first checkpoint starts again with the settings its config.yaml recorded.
            if run.config.is_file():
                fresh = TrainConfig.from_recipe(**{**load_config_file(run.config), **explicit})
            logging.getLogger("dsrnet").info(f"--resume: {fresh.out_dir} holds no checkpoint yet; starting the run")
            return fresh
        resume = fresh.out_dir
    return resume_config(resume, **explicit)


def _cmd_train(args: argparse.Namespace) -> int:
    from dsrnet.train import train

    cfg = config_from_args(args)
    if getattr(args, "print_config", False):
        print(cfg.to_yaml(), end="")
        return 0
    _check_config_file_kept(args, cfg)
    final = train(cfg)
    if os.environ.get("RANK", "0") != "0":  # under torchrun: one result line (rank 0's), as one run folder
        return 0
    stopped = f" (STOPPED EARLY by --deadline, of {final['epochs']} planned)" if final["stopped_early"] else ""
    print(
        f"{final['model']} on {final['dataset']}, final epoch {final['epochs_done']}{stopped}: top-1 error "
        f"{final['top1_error']:.2f}%, top-3 error {final['top3_error']:.2f}%, top-5 error {final['top5_error']:.2f}% "
        f"-> {final['out_dir']}"
    )
    return 0


#: Settings every config.yaml dsrnet has written holds, resolved (a hand-written file rarely names them all).
_ALWAYS_WRITTEN = frozenset({"model", "dataset", "recipe", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                             "seed", "out_dir"})  # fmt: skip


def _check_config_file_kept(args: argparse.Namespace, cfg) -> None:
    """Refuse to start a new run (``--resume`` of a folder without a checkpoint starts one too) whose ``--config``
    file is the run folder's own ``config.yaml`` written by hand: the run rewrites that file with every setting
    resolved, and its comments and layout would be lost (a folder holding only an experiment's config.yaml counts
    as a new run folder). A file dsrnet wrote (YAML's own dump: a run killed before its first checkpoint, started
    again) and a folder holding a run are left alone."""
    import yaml

    given = getattr(args, "config", None)
    run = RunDir(cfg.out_dir)
    if run.holds_run or not given or not run.config.is_file() or not Path(given).is_file():
        return  # (a run that holds a checkpoint is resumed, or refused: its config.yaml is its own record)
    if not run.config.samefile(given):
        return
    text = run.config.read_text(encoding="utf-8")
    try:  # what dsrnet writes (this version or an older one): YAML's own dump, byte for byte, of every setting
        saved = yaml.safe_load(text)
        written = isinstance(saved, dict) and set(saved) >= _ALWAYS_WRITTEN
        if written and yaml.safe_dump(saved, sort_keys=False) == text:
            return
    except yaml.YAMLError:
        pass
    raise DsrnetError(
        f"--config {given} is the run folder's own config.yaml, which the run rewrites with every setting resolved "
        f"(the file's comments and layout would be lost); fix: keep your file outside --out-dir {cfg.out_dir}, "
        f"or pass another --out-dir"
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    from dsrnet.infer import evaluate_checkpoint

    m = evaluate_checkpoint(
        args.checkpoint,
        data_dir=args.data_dir,
        download=args.download,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        test_subset_per_class=args.test_subset_per_class,
        out_dir=args.out_dir,
        backend=args.backend,
    )
    epoch = f", epoch {m['epoch']}" if m["epoch"] is not None else ""  # a weights or exported file has no epoch
    print(
        f"{m['model']} on {m['dataset']} ({m['test_images']} test images{epoch}): top-1 error "
        f"{m['top1_error']:.2f}%, top-3 error {m['top3_error']:.2f}%, top-5 error {m['top5_error']:.2f}%, "
        f"loss {m['test_loss']:.4f} -> {m['out_dir']}"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from dsrnet.infer import image_files, predict

    files = image_files(args.images)
    results = predict(args.checkpoint, files, top_k=args.top_k, device=args.device, backend=args.backend)
    width = max(len(c) for r in results for c, _ in r)
    for path, res in zip(files, results, strict=True):
        print(path)
        for cls, prob in res:
            print(f"  {cls:<{width}}  {prob:.4f}")
    return 0

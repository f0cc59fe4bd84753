"""``dsrnet bench``: sane numbers at tiny sizes on CPU, the FLOP count against a hand count, outputs, bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

import dsrnet
from dsrnet.bench import measure as bench
from dsrnet.cli.main import main
from dsrnet.device import resolve_device
from dsrnet.errors import DsrnetError

TINY = {"widths": [8, 16, 32, 64]}


@pytest.mark.parametrize("name", ["dsrnet50", "resnet50"])
def test_benchmark_model_numbers_are_sane(name):
    row = bench.benchmark_model(name, image_size=32, batch_size=2, device="cpu", warmup=1, repeats=3)
    model = dsrnet.create_model(name, num_classes=10)
    assert row["params"] == sum(p.numel() for p in model.parameters())
    assert row["flops_per_image"] > 0
    assert row["gmacs_per_image"] == pytest.approx(row["flops_per_image"] / 2e9)
    assert len(row["times_ms"]) == 3 and all(t > 0 for t in row["times_ms"])
    assert row["latency_min_ms"] <= row["latency_p25_ms"] <= row["latency_ms"] <= row["latency_p75_ms"]
    assert row["latency_p75_ms"] <= row["latency_max_ms"]
    assert row["images_per_s"] == pytest.approx(2 / (row["latency_ms"] / 1e3))
    assert (row["arch"], row["stem"], row["device"], row["mode"]) == (name, "paper", "cpu", "inference")


def test_dsrnet_is_smaller_and_cheaper_than_resnet50():
    """The paper's Fig. 2 claim in the form this code can check without timing: fewer params and MACs."""
    d = bench.benchmark_model("dsrnet50", image_size=32, batch_size=2, warmup=0, repeats=1)
    r = bench.benchmark_model("resnet50", image_size=32, batch_size=2, warmup=0, repeats=1)
    assert d["params"] < r["params"] and d["flops_per_image"] < r["flops_per_image"]


def test_flop_count_matches_hand_count():
    conv = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False),
    )
    macs = 8 * 3 * 9 * 16 * 16 + 8 * 1 * 9 * 16 * 16  # full conv + depthwise conv on a 16x16 map
    assert bench.count_flops(conv, 16) == 2 * macs


def test_train_mode_bf16_channels_last_and_cifar_stem():
    row = bench.benchmark_model(
        "dsrnet50", image_size=32, batch_size=2, warmup=1, repeats=1, mode="train", precision="bf16",
        channels_last=True, stem="cifar", model_kwargs=TINY,
    )  # fmt: skip
    assert row["arch"] == "dsrnet50_cifar" and row["stem"] == "cifar" and row["model_kwargs"] == TINY
    assert row["params"] == sum(
        p.numel() for p in dsrnet.create_model("dsrnet50_cifar", 10, **TINY).parameters()
    )
    assert row["latency_ms"] > 0 and row["mode"] == "train" and row["precision"] == "bf16"


def test_summarize_times():
    stats = bench.summarize_times([0.004, 0.001, 0.003, 0.002])
    assert stats["latency_ms"] == pytest.approx(2.5)
    assert stats["latency_p25_ms"] == pytest.approx(1.75)
    assert stats["latency_p75_ms"] == pytest.approx(3.25)
    assert (stats["latency_min_ms"], stats["latency_max_ms"]) == pytest.approx((1.0, 4.0))


def test_run_bench_writes_csv_json_markdown(tmp_path):
    result = bench.run_bench(
        ["dsrnet50", "resnet50"], sizes=[32], batch_size=2, device="cpu", warmup=0, repeats=1, out_dir=tmp_path,
        model_kwargs=TINY, log=lambda msg: None,
    )  # fmt: skip
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["bench_cpu.csv", "bench_cpu.json", "bench_cpu.md"]
    with open(tmp_path / "bench_cpu.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows] == ["dsrnet50", "resnet50"]
    # the CSV stands alone: the threads (1 vs 2 halves a CPU latency) and the library versions are in each row
    assert int(rows[0]["torch_threads"]) == torch.get_num_threads() and rows[0]["torchvision"]
    assert float(rows[0]["rel_to_dsrnet"]) == pytest.approx(1.0)
    assert float(rows[1]["rel_to_dsrnet"]) == pytest.approx(
        result["rows"][1]["latency_ms"] / result["rows"][0]["latency_ms"]
    )
    data = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert (
        data["env"]["torch"] == torch.__version__ and data["env"]["torch_threads"] == torch.get_num_threads()
    )
    md = (tmp_path / "bench_cpu.md").read_text()
    # A narrowed DSRNet is not the paper's network: its arguments are part of its name.
    assert md.startswith("| model |") and '| DSRNet {"widths":' in md and "| ResNet50 |" in md
    assert "Environment: torch" in md and "torchvision " in md and "Python " in md
    # batch 2, narrowed widths: not the paper's setting, so no paper ratio, and no "(paper)" in the heading
    assert "Time per batch relative to DSRNet (> 1: DSRNet is faster), measured:" in md
    assert "(paper)" not in md and "(paper, " not in md


def test_cli_bench_prints_table(tmp_path, capsys):
    rc = main(
        [
            "bench",
            "--models",
            "dsrnet50",
            "--sizes",
            "32",
            "--batch-size",
            "2",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--model-kwargs",
            json.dumps(TINY),
            "--out-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert '| DSRNet {"widths":[8,16,32,64]} | paper | 32 | 2 | inference | fp32 |' in out
    assert "Command: `dsrnet bench --models dsrnet50 --sizes 32 --batch-size 2" in out
    assert (tmp_path / "bench_cpu.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "resnet5"], "unknown model 'resnet5'"),
        (["--repeats", "0"], "repeats must be an integer >= 1"),
        (["--sizes", "4"], "image size must be an integer >= 8"),
        (["--model-kwargs", "{widths"], "--model-kwargs is not valid JSON"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_cli_bad_arguments(argv, message, tmp_path, capsys):
    rc = main(["bench", "--out-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("dsrnet: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when there is no GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(DsrnetError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_fused_variant_is_timed_for_dsrnet_only(tmp_path):
    result = bench.run_bench(
        ["dsrnet50_cifar", "resnet50_cifar"], sizes=[16], batch_size=2, device="cpu", warmup=0, repeats=1,
        fused=True, model_kwargs={"widths": [4, 8, 8, 16], "layers": [1, 1, 1, 1]}, out_dir=tmp_path,
    )  # fmt: skip
    # The plain DSRNet, then its fused form (one run, back to back), then the baseline as it is.
    assert [(r["arch"], r["fused"]) for r in result["rows"]] == [
        ("dsrnet50_cifar", False), ("dsrnet50_cifar", True), ("resnet50_cifar", False)
    ]  # fmt: skip
    plain, fused, resnet = result["rows"]
    assert plain["rel_to_dsrnet"] == 1.0 and fused["rel_to_dsrnet"] == fused["latency_ms"] / plain["latency_ms"]
    assert resnet["rel_to_dsrnet"] == resnet["latency_ms"] / plain["latency_ms"]  # against the plain DSRNet
    assert 'DSRNet {"widths":[4,8,8,16],"layers":[1,1,1,1]} (fused)' in result["markdown"]
    # The fused form reports the network's parameters and MACs (its folded weights are buffers, its ops custom).
    assert fused["params"] == plain["params"] > 0
    assert fused["flops_per_image"] == plain["flops_per_image"] > 0
    with pytest.raises(DsrnetError, match="fused form is for inference"):
        bench.benchmark_model("dsrnet50_cifar", image_size=16, batch_size=2, mode="train", fused=True)


def test_fused_takes_a_fuse_mode_from_the_command_line(tmp_path):
    """``--fused`` times dsrnet.fuse's default mode; ``--fused block`` (any mode) that one, labelled and recorded."""
    from dsrnet.cli.main import build_parser
    from dsrnet.models.fused import DEFAULT_FUSE_MODE

    parse = build_parser().parse_args
    assert parse(["bench", "--fused"]).fused == DEFAULT_FUSE_MODE and parse(["bench"]).fused is False
    assert parse(["bench", "--fused", "block", "--channels-last"]).fused == "block"
    with pytest.raises(SystemExit):
        parse(["bench", "--fused", "fastest"])
    kwargs = {"sizes": [16], "batch_size": 2, "device": "cpu", "warmup": 0, "repeats": 1,
              "model_kwargs": {"widths": [4, 8, 8, 16], "layers": [1, 1, 1, 1]}}  # fmt: skip
    default = bench.run_bench(["dsrnet50_cifar"], fused=True, **kwargs)["rows"][1]
    block = bench.run_bench(["dsrnet50_cifar"], fused="block", out_dir=tmp_path, **kwargs)
    assert default["fuse_mode"] == DEFAULT_FUSE_MODE and block["rows"][1]["fuse_mode"] == "block"
    assert [r["fuse_mode"] for r in block["rows"]] == [None, "block"]
    assert "(fused, block)" in block["markdown"] and "fuse_mode" in (tmp_path / "bench_cpu.csv").read_text()


def test_fused_form_at_bf16_runs_its_kernels_in_bf16(monkeypatch):
    """Autocast does not reach custom ops: under a bf16 autocast the fused form's kernels ran in fp32 (only its head
    in bf16), and the row said bf16. It is now cast, weights and input: its first op, the stem kernel, gets bf16
    (on a GPU every kernel's output takes its input's dtype)."""
    from dsrnet.kernels import ops

    seen = []
    real = ops.direct_conv
    monkeypatch.setattr(ops, "direct_conv", lambda x, w, *a: seen.append((x.dtype, w.dtype)) or real(x, w, *a))
    row = bench.benchmark_model(
        "dsrnet50_cifar", image_size=16, batch_size=2, warmup=0, repeats=1, precision="bf16", fused=True,
        model_kwargs={"widths": [4, 8, 8, 16], "layers": [1, 1, 1, 1]},
    )  # fmt: skip
    assert row["precision"] == "bf16" and row["fused"] and seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}


@pytest.mark.parametrize("dwconv", ["triton_bn_relu", "shifts"])
def test_dwconv_training_forms_are_timed_for_models_with_depthwise_convs(tmp_path, dwconv):
    # On this CPU the Triton ops take their PyTorch fallback: this is about which models get which form.
    tiny = {"widths": [4, 8, 8, 16], "layers": [1, 1, 1, 1]}
    result = bench.run_bench(
        ["dsrnet50_cifar", "resnet50_cifar"], sizes=[16], batch_size=2, device="cpu", warmup=0, repeats=1,
        modes=["train"], dwconv=dwconv, model_kwargs=tiny, out_dir=tmp_path,
    )  # fmt: skip
    rows = {r["arch"]: r for r in result["rows"]}
    assert (rows["dsrnet50_cifar"]["dwconv"], rows["resnet50_cifar"]["dwconv"]) == (dwconv, "torch")
    assert f"1,1]}} ({dwconv})" in result["markdown"] and "ResNet50 |" in result["markdown"]
    assert dwconv in (tmp_path / "bench_cpu.csv").read_text()
    plain = bench.benchmark_model("dsrnet50_cifar", image_size=16, batch_size=2, warmup=0, repeats=1, mode="train",
                                  model_kwargs=tiny)  # fmt: skip
    assert rows["dsrnet50_cifar"]["flops_per_image"] == plain["flops_per_image"] > 0  # counted on the plain model
    with pytest.raises(DsrnetError, match="none of resnet50 has any; fix: drop --dwconv"):
        bench.run_bench(["resnet50"], sizes=[16], device="cpu", dwconv="triton", out_dir=tmp_path / "no")
    with pytest.raises(DsrnetError, match="--fused \\(inference form\\) and other backends replace"):
        bench.benchmark_model("dsrnet50_cifar", image_size=16, batch_size=2, fused=True, dwconv="triton")
    with pytest.raises(DsrnetError, match="dwconv 'cudnn' is not valid"):
        bench.benchmark_model("dsrnet50_cifar", image_size=16, batch_size=2, dwconv="cudnn")


def test_the_pointwise_matmul_form_is_timed_for_every_model_and_refused_with_inference_forms(tmp_path, monkeypatch):
    from dsrnet.models.matmul_pointwise import MatmulPointwiseConv2d

    calls = []
    forward = MatmulPointwiseConv2d.forward
    monkeypatch.setattr(MatmulPointwiseConv2d, "forward", lambda self, x: calls.append(1) or forward(self, x))
    tiny = {"widths": [4, 8, 8, 16], "layers": [1, 1, 1, 1]}
    result = bench.run_bench(
        ["dsrnet50_cifar", "resnet50_cifar"], sizes=[16], batch_size=2, device="cpu", warmup=0, repeats=1,
        modes=["train"], pointwise="matmul", model_kwargs=tiny, out_dir=tmp_path,
    )  # fmt: skip
    assert {r["arch"]: r["pointwise"] for r in result["rows"]} == {"dsrnet50_cifar": "matmul",
                                                                  "resnet50_cifar": "matmul"}  # fmt: skip
    assert len(calls) > 0 and result["markdown"].count("(1x1 as matmul)") == 2
    assert "matmul" in (tmp_path / "bench_cpu.csv").read_text()
    # the CLI passes the flag through
    from dsrnet.cli.main import main

    assert main(["bench", "--models", "dsrnet50_cifar", "--sizes", "16", "--batch-size", "2", "--device", "cpu",
                 "--mode", "train", "--warmup", "0", "--repeats", "1", "--pointwise", "matmul", "--model-kwargs",
                 json.dumps(tiny), "--out-dir", str(tmp_path / "cli")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "cli" / "bench_cpu.json").read_text())["rows"][0]["pointwise"] == "matmul"
    with pytest.raises(DsrnetError, match="--fused \\(inference form\\) and other backends replace"):
        bench.benchmark_model("dsrnet50_cifar", image_size=16, batch_size=2, fused=True, pointwise="matmul")
    with pytest.raises(DsrnetError, match="pointwise 'linear' is not valid; fix: choose one of conv, matmul"):
        bench.run_bench(["dsrnet50_cifar"], sizes=[16], device="cpu", pointwise="linear", out_dir=tmp_path / "no")


def test_cpu_backend_rows(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from dsrnet.export import backends

    threads, real = [], backends.load_runner

    def spy(*args, **kwargs):  # the engine gets torch's thread count (--threads), not all cores
        threads.append(kwargs.get("threads"))
        return real(*args, **kwargs)

    monkeypatch.setattr(backends, "load_runner", spy)
    kw = {"widths": [4, 8, 8, 16], "layers": [1, 1, 1, 1]}
    result = bench.run_bench(["dsrnet50_cifar"], sizes=[16], batch_size=2, device="cpu", warmup=1, repeats=2,
                             backend="onnxruntime", model_kwargs=kw, out_dir=tmp_path)  # fmt: skip
    (row,) = result["rows"]
    assert row["backend"] == "onnxruntime" and row["latency_ms"] > 0 and row["params"] > 0
    assert threads == [torch.get_num_threads()]
    assert '1,1]} [onnxruntime]' in result["markdown"]
    with pytest.raises(DsrnetError, match="times CPU inference"):
        bench.benchmark_model("dsrnet50_cifar", image_size=16, batch_size=2, mode="train", backend="onnxruntime")


def test_compile_mode_reaches_torch_compile_and_the_table(tmp_path, capsys, monkeypatch):
    seen = []

    def fake_compile(model, **kwargs):  # compiling for real takes minutes on a CPU; the plumbing is what's tested
        seen.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    argv = ["bench", "--models", "dsrnet50", "--sizes", "32", "--batch-size", "2", "--warmup", "1", "--repeats", "1",
            "--device", "cpu", "--model-kwargs", json.dumps(TINY), "--out-dir", str(tmp_path)]  # fmt: skip
    assert main([*argv, "--compile-mode", "reduce-overhead"]) == 0
    assert seen == [{"mode": "reduce-overhead"}]
    out = capsys.readouterr().out
    assert "| NCHW | reduce-overhead |" in out
    row = json.loads((tmp_path / "bench_cpu.json").read_text())["rows"][0]
    assert row["compile"] is True and row["compile_mode"] == "reduce-overhead"
    # the files of the run before are a table someone may cite: replaced only when asked
    assert main([*argv, "--compile"]) == 2 and len(seen) == 1
    assert "holds bench_cpu.csv, bench_cpu.json, bench_cpu.md of an earlier run; fix:" in capsys.readouterr().err
    assert main([*argv, "--compile", "--overwrite"]) == 0 and seen[-1] == {"mode": "default"}
    assert len(resets) == len(seen) == 2  # each compiled configuration gets a fresh (static-shape) graph
    assert "| NCHW | yes |" in capsys.readouterr().out
    with pytest.raises(DsrnetError, match="compile mode 'fast' is not valid"):
        bench.benchmark_model("dsrnet50", device="cpu", compile=True, compile_mode="fast", model_kwargs=TINY)
    # no warm-up would put the compilation into the timed calls
    with pytest.raises(DsrnetError, match=r"--warmup 0 would time the compilation.*fix: --warmup 1"):
        bench.benchmark_model("dsrnet50", device="cpu", compile=True, warmup=0, model_kwargs=TINY)


def test_backend_settings_it_cannot_honour_are_refused_before_any_timing(tmp_path, monkeypatch):
    timed = []
    monkeypatch.setattr(bench, "time_calls", lambda *a, **k: timed.append(1) or [1e-3])
    with pytest.raises(DsrnetError, match="precision 'bf16' is not available on backend 'onnxruntime'"):
        bench.run_bench(["dsrnet50_cifar"], sizes=[16], batch_size=2, device="cpu", backend="onnxruntime",
                        precisions=("fp32", "bf16"), model_kwargs=TINY, out_dir=tmp_path)  # fmt: skip
    assert timed == []  # the fp32 rows used to be timed (minutes) before the refusal
    with pytest.raises(DsrnetError, match="backend onnxruntime takes NCHW input; fix: drop --channels-last"):
        bench.benchmark_model("dsrnet50_cifar", image_size=16, batch_size=2, device="cpu", backend="onnxruntime",
                              channels_last=True, model_kwargs=TINY)  # fmt: skip


def test_cpu_training_peak_counts_weights_gradients_and_optimiser_state():
    """With the first call outside the memory window, a training step's gradients and SGD momentum (made by that
    call) fell out of the peak: ResNet-50 at batch 4 showed 227 MB, its weights alone being 90."""
    row = bench.benchmark_model("mobilenet_v2_cifar", image_size=16, batch_size=2, device="cpu", mode="train",
                                warmup=1, repeats=2)  # fmt: skip
    weights_mb = row["params"] * 4 / 2**20
    assert row["peak_mem_mb"] >= 2.9 * weights_mb  # weights + gradients + momentum, each fp32


def test_cpu_peak_memory_does_not_depend_on_what_ran_before(tmp_path):
    """It used to: a model timed after a larger one reused its freed memory and showed less than its own weights."""
    def peak(models):
        rows = bench.run_bench(models, sizes=[16], batch_size=2, device="cpu", warmup=1, repeats=1)["rows"]
        return {r["arch"]: r for r in rows}

    alone = peak(["mobilenet_v2_cifar"])["mobilenet_v2_cifar"]
    after = peak(["resnet50_cifar", "mobilenet_v2_cifar"])["mobilenet_v2_cifar"]
    weights_mb = alone["params"] * 4 / 2**20
    assert alone["peak_mem_mb"] >= weights_mb and after["peak_mem_mb"] >= weights_mb
    assert abs(after["peak_mem_mb"] - alone["peak_mem_mb"]) < 0.25 * alone["peak_mem_mb"] + 2


def test_peak_memory_leaves_out_the_first_call_where_compilation_happens(monkeypatch):
    """A compiled model's peak counted its compilation (a CPU ResNet-50: 192 MB compiled against 90 MB eager)."""
    calls = []

    class Probe:
        kind = "peak RSS growth"

        def __init__(self, device, extra_mb=0.0):
            calls.append("probe")

        def peak_mb(self):
            return 1.0

    real = bench.time_calls

    def counting(fn, *, device, warmup, repeats):
        calls.append(("calls", warmup, repeats))
        return real(fn, device=device, warmup=warmup, repeats=repeats)

    monkeypatch.setattr(bench, "_MemoryProbe", Probe)
    monkeypatch.setattr(bench, "time_calls", counting)
    bench.benchmark_model("dsrnet50", image_size=16, batch_size=2, device="cpu", warmup=2, repeats=3,
                          model_kwargs=TINY)  # fmt: skip
    assert calls == [("calls", 1, 0), "probe", ("calls", 1, 3)]


def test_the_papers_ratio_stands_only_beside_the_papers_setting():
    def rows(**over):
        base = {"stem": "paper", "image_size": 32, "batch_size": 128, "mode": "inference", "precision": "fp32",
                "channels_last": False, "compile": False}  # fmt: skip
        out = [{**base, "arch": "dsrnet50", "model": "dsrnet50", "latency_ms": 10.0},
               {**base, "arch": "resnet50", "model": "resnet50", "latency_ms": 20.0}]  # fmt: skip
        for r in out:
            r.update({k: v for k, v in over.items() if k != "model_kwargs"})
        if "model_kwargs" in over:
            out[0]["model_kwargs"] = over["model_kwargs"]
        bench.add_relative_latency(out)
        return bench.speed_claims(out)

    (line,) = rows()
    assert line == "ResNet50 at 32 px (paper stem, inference, fp32): 2.00x DSRNet's time (paper, cifar10: 4.86x)"
    for over in ({"compile": True}, {"mode": "train"}, {"precision": "bf16"}, {"batch_size": 1024},
                 {"stem": "cifar"}, {"channels_last": True}, {"pointwise": "matmul"}):  # fmt: skip
        (line,) = rows(**over)
        assert "(paper," not in line, over
    (line,) = rows(model_kwargs={"widths": [8, 16, 32, 64]})
    assert line == 'ResNet50 at 32 px (paper stem, inference, fp32): 2.00x DSRNet {"widths":[8,16,32,64]}\'s time'


def test_relative_latency_compares_within_a_stem():
    rows = [
        {"arch": a, "stem": st, "image_size": 32, "batch_size": 2, "mode": "inference", "precision": "fp32",
         "channels_last": False, "compile": False, "latency_ms": ms}
        for a, st, ms in [("dsrnet50", "paper", 1.0), ("dsrnet50_cifar", "cifar", 10.0), ("resnet50", "paper", 2.0),
                          ("resnet50_cifar", "cifar", 15.0)]
    ]  # fmt: skip
    bench.add_relative_latency(rows)
    assert [r["rel_to_dsrnet"] for r in rows] == [1.0, 1.0, 2.0, 1.5]


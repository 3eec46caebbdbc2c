"""The bad-input table: what a hostile but fair user tries, and what each command must answer.

One parametrised test per command. Each row is (arguments, exit code, words that stderr must
hold, files that must not exist, files that must exist). Exit code 2 also means: stderr is
exactly one line, `<prog>: error: ...`, without a traceback or progress before it. `{name}`
in a row is a path from the `place` fixture (files built once for the module). The numbers
in the ids are the rows of the reliability issue's table; rows 6, 9 and 15 (signals, a full
disk, two runs racing) are in test_signals.py, row 19 (the API) is at the end of this file.
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dimap_struct.cli import bench, compress, eval as eval_cli, finetune
from shared_data import mnist_dir

LONG_OK = "n" * 249 + ".onnx"  # 254 bytes: legal, and its report's name fits too
LONG_BAD = "n" * 295 + ".onnx"  # 300 bytes: over any file system's limit


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """Paths the rows refer to, built once: checkpoints of the reference model in every layout a
    user may bring, a 1-channel model, image folders (good, broken, ten classes), a file where a
    directory is expected, a directory where a file is expected."""
    from PIL import Image

    from dimap_struct.models import load_model
    from dimap_struct.pipeline import compress as compress_api

    root = tmp_path_factory.mktemp("bad_input")
    model = load_model("reference").model
    state = model.state_dict()
    qkv = next(k for k in state if k.endswith("attn.qkv.weight"))
    fc1 = next(k for k in state if k.endswith("mlp.fc1.weight"))
    torch.save({"model": {**state, qkv: _poke(state[qkv], float("inf"))}}, root / "inf.pth")
    torch.save({**state, fc1: _poke(state[fc1], float("nan"))}, root / "nan.pth")
    torch.save({"epoch": 3, "model_ema": state}, root / "ema.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "ddp.pth")
    torch.save(state, root / "plain.pth")
    torch.save({f"_orig_mod.module.{k}": v for k, v in state.items()}, root / "compiled_ddp.pth")
    import argparse

    torch.save({"state_dict": state, "epoch": 9, "args": argparse.Namespace(lr=0.1, model="x")},
               root / "timm_train.pth")  # what timm's train.py writes
    torch.save(model, root / "module.pth")
    (root / "adir.pth").mkdir()
    (root / "afile").write_text("a file, not a directory")
    (root / "taken.onnx").write_text("an earlier run's file")
    (root / "taken.json").write_text("an earlier run's file")
    (root / "d" / "dir.onnx").mkdir(parents=True)
    (root / "e" / "out.json").mkdir(parents=True)

    compress_api("swin_tiny_patch4_window7_224", 0.5, pretrained=False, output=str(root / "gray.onnx"),
                 model_kwargs={"in_chans": 1, "img_size": 56, "window_size": 7, "embed_dim": 24, "num_classes": 3,
                               "depths": (1, 1, 1, 1), "num_heads": (2, 2, 2, 2)})
    import onnx

    _second_pass_files(root, state)
    foreign = onnx.load(str(root / "gray.onnx"))
    del foreign.metadata_props[:]  # what another tool's export (or a hand-quantized copy) looks like
    onnx.save(foreign, str(root / "foreign.onnx"))
    rng = np.random.default_rng(0)
    for mode, name in (("RGB", "rgb"), ("L", "grey"), ("CMYK", "cmyk")):  # a folder may mix them
        for label in ("a", "b"):
            (root / "photos" / label).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (40, 40, len(mode)), dtype=np.uint8).squeeze()
            Image.fromarray(pixels, mode).save(root / "photos" / label / f"{name}.jpg")
    for label in range(10):
        (root / "ten" / f"c{label}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "ten" / f"c{label}" / "x.jpg")
    (root / "flat").mkdir()  # ImageNet-style calibration images: no class folders
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "flat" / f"img{i}.jpg")
    for label in range(12):
        (root / "twelve" / f"c{label:02d}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L").save(root / "twelve" / f"c{label:02d}" / "x.png")
    for broken, content in (("truncated", None), ("garbage", b"this is no JPEG")):
        folder = root / broken
        (folder / "a").mkdir(parents=True)
        good = (root / "photos" / "a" / "rgb.jpg").read_bytes()
        (folder / "a" / "fine.jpg").write_bytes(good)
        (folder / "a" / f"{broken}.jpg").write_bytes(content if content is not None else good[: len(good) // 3])
    return root


class _Payload:
    """A pickle that runs a command when unpickled (what a crafted resume or checkpoint holds)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _second_pass_files(root: Path, state: dict) -> None:
    """Files of the reliability issue's second pass (rows r1-r35 of its table)."""
    import json
    import pickle

    import onnx
    from safetensors.torch import save_file

    from dimap_struct.models.checkpoint import SPEC_KEY
    from dimap_struct.pipeline import compress as compress_api

    os.mkfifo(root / "fifo.pt")
    (root / "zero.pt").write_bytes(b"")
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "w.safetensors"))
    save_file({k: (v.to(torch.int32) if v.is_floating_point() else v).contiguous() for k, v in state.items()},
              str(root / "int.safetensors"))
    (root / "ck.onnx").write_bytes((root / "plain.pth").read_bytes())
    with open(root / "p4.pt", "wb") as f:
        pickle.dump({k: v for k, v in state.items()}, f, protocol=4)
    torch.save({"model": _Payload(root / "PWNED")}, root / "evil_zip.pt")
    compress_api("reference", 0.5, save_pt=str(root / "pruned.pt"))
    spec = {"format": 99, "architecture": {}}
    save_file({"x": torch.zeros(1)}, str(root / "spec99.pt"), metadata={SPEC_KEY: json.dumps(spec)})
    save_file({"x": torch.zeros(1)}, str(root / "badspec.pt"), metadata={SPEC_KEY: json.dumps({"format": 2,
                                                                                               "architecture": 5})})
    (root / "precious.onnx").write_text("precious")
    (root / "force.yaml").write_text(f"model: reference\noutput: {root / 'precious.onnx'}\nforce: true\n")
    (root / "zero.yaml").symlink_to("/dev/zero")
    (root / "real.onnx").write_text("a link's target")
    (root / "link.onnx").symlink_to(root / "real.onnx")
    (root / "gray_link.md").symlink_to(root / "gray.onnx")
    for resume, content in (("empty", b""), ("list", None), ("nan", None), ("cut", None), ("evil", None)):
        path = root / f"r_{resume}.resume.pt"
        if resume == "empty":
            path.write_bytes(content)
        elif resume == "list":
            torch.save([1, 2, 3], path)
        elif resume == "nan":
            from dimap_struct.recover.finetune import rng_state

            torch.save({"student": {"w": torch.tensor([float("nan")])}, "optimizer": {"state": {}, "param_groups": []},
                        "scaler": {}, "ema": {}, "rng": rng_state(torch.device("cpu")), "epoch": 1, "position": 0, "step": 3,
                        "meta": {}}, path)
        elif resume == "cut":
            torch.save({"student": state, "optimizer": {}, "epoch": 1, "step": 3, "meta": {}}, path)
            path.write_bytes(path.read_bytes()[:2000])
        else:
            torch.save({"meta": _Payload(root / "PWNED_RESUME")}, path)
    wrong = onnx.load(str(root / "gray.onnx"))
    from dimap_struct.deploy.onnx_file import METADATA_KEY
    from dimap_struct.report.schema import REPORT_FORMAT

    del wrong.metadata_props[:]
    wrong.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(
        {"format": REPORT_FORMAT, "source": 5, "blocks": "none"})))
    onnx.save(wrong, str(root / "wrong_schema.onnx"))


def _poke(tensor, value):
    tensor = tensor.clone()
    tensor.view(-1)[7] = value
    return tensor


def _fill(arg: str, place: Path) -> str:
    return arg.format(p=place, mnist=mnist_dir() or "no-mnist")


def _check(main, prog, row, place, capsys):
    args, code, words, absent, present = row
    got = main([_fill(a, place) for a in args])
    out, err = capsys.readouterr()
    assert got == code, err
    for word in words:
        assert _fill(word, place) in err, err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err, err
    for name in absent:
        assert not Path(_fill(name, place)).exists(), name
    for name in present:
        assert Path(_fill(name, place)).is_file(), name
    assert not [p for p in place.rglob(".dimap-*")], "temporary files left behind"


COMPRESS = {
    "1-calib-batches-negative": (["reference", "--criterion", "taylor", "--calib-data", "{mnist}",
                                  "--calib-batches=-3"], 2, ["--calib-batches must be an integer >= 1"], [], []),
    "2-calib-batches-zero": (["reference", "--criterion", "taylor", "--calib-data", "{mnist}",
                              "--calib-batches", "0"], 2, ["--calib-batches must be an integer >= 1"], [], []),
    "3-inf-in-qkv": (["reference", "--checkpoint", "{p}/inf.pth", "-o", "{p}/x3.onnx"], 2,
                     ["non-finite", "attn.qkv.weight"], ["{p}/x3.onnx", "{p}/x3.json"], []),
    "4-nan-in-fc1": (["reference", "--checkpoint", "{p}/nan.pth", "-o", "{p}/x4.onnx"], 2,
                     ["non-finite", "mlp.fc1.weight"], ["{p}/x4.onnx", "{p}/x4.json"], []),
    "5-output-is-a-directory": (["reference", "-o", "{p}/d/dir.onnx", "--force"], 2, ["is a directory"],
                                ["{p}/d/dir.json"], []),
    "5-report-is-a-directory": (["reference", "-o", "{p}/e/out.onnx", "--force"], 2, ["out.json is a directory"],
                                ["{p}/e/out.onnx"], []),
    "7-name-of-254-bytes": (["reference", "-o", "{p}/" + LONG_OK], 0, [], [],
                            ["{p}/" + LONG_OK, "{p}/" + LONG_OK[:-5] + ".json"]),
    "8-name-of-300-bytes": (["reference", "-o", "{p}/" + LONG_BAD], 2, ["file name is 300 bytes long"], [], []),
    "13-seed-overflow": (["reference", "--seed=99999999999999999999"], 2,
                         ["--seed must be an integer >= 0 and <= 9223372036854775807"], [], []),
    "14-unwritable-directory": (["reference", "-o", "/proc/x.onnx"], 2, ["/proc is not writable"], [], []),
    "16-pickled-module": (["reference", "--checkpoint", "{p}/module.pth"], 2, ["pickled Python objects"], [], []),
    "17-ema-weights": (["reference", "--checkpoint", "{p}/ema.pth", "--json"], 0, [], [], []),
    "18-ddp-prefix": (["reference", "--checkpoint", "{p}/ddp.pth", "--json"], 0, [], [], []),
    "18-other-architecture": (["swin_t", "--checkpoint", "{p}/plain.pth"], 2,
                              ["is for a model with depths", "not swin_tiny_patch4_window7_224 (depths (2, 2, 6, 2)"],
                              [], []),
    "21-existing-output": (["reference", "-o", "{p}/taken.onnx"], 2, ["already exists; pass --force"], [], []),
    "22-directory-is-a-file": (["reference", "-o", "{p}/afile/x.onnx"], 2, ["afile is a file, not a directory"],
                               [], []),
    "22-checkpoint-is-a-directory": (["reference", "--checkpoint", "{p}/adir.pth/"], 2,
                                     ["adir.pth is a directory, not a regular file"], [], []),
    # the second pass: rows r1-r35 of the table
    "r3-save-pt-is-the-checkpoint": (["reference", "--checkpoint", "{p}/w.safetensors", "--save-pt",
                                      "{p}/w.safetensors", "--force"], 2, ["is also an input"], [], []),
    "r3-output-is-the-checkpoint": (["reference", "--checkpoint", "{p}/ck.onnx", "-o", "{p}/ck.onnx", "--force"], 2,
                                    ["is also an input"], [], []),
    "r3-save-pt-is-the-from-pt": (["--from-pt", "{p}/pruned.pt", "--save-pt", "{p}/pruned.pt", "--force"], 2,
                                  ["is also an input"], [], []),
    "r4-recipe-sets-force": (["--config", "{p}/force.yaml"], 2, ["sets 'force'; a recipe may not"], [], []),
    "r9-integer-weights": (["reference", "--checkpoint", "{p}/int.safetensors"], 2,
                           ["is int32, not floating point"], [], []),
    "r11-from-pt-with-checkpoint": (["--from-pt", "{p}/pruned.pt", "--checkpoint", "{p}/plain.pth"], 2,
                                    ["--checkpoint does not apply"], [], []),
    "r13-checkpoint-is-a-fifo": (["reference", "--checkpoint", "{p}/fifo.pt"], 2,
                                 ["is a FIFO (named pipe), not a regular file"], [], []),
    "r17-largest-seed-with-calibration": (["reference", "--seed", "9223372036854775807", "--calib-data", "{p}/ten",
                                           "--calib-images", "4", "--json"], 0, [], [], []),
    "r24-path-over-path-max": (["reference", "-o", "{p}" + ("/" + "d" * 200) * 21 + "/x.onnx"],
                               2, ["path is", "bytes long; the system allows 4095"], [], []),
    "r24-hub-id-of-500-characters": (["hf:" + "a" * 500], 2, ["is neither a directory nor a Hugging Face hub id"],
                                     [], []),
    "r26-output-is-a-link": (["reference", "-o", "{p}/link.onnx", "--force"], 0, [], [],
                             ["{p}/link.onnx", "{p}/real.onnx"]),
    "r27-pickle-protocol-4": (["reference", "--checkpoint", "{p}/p4.pt"], 2, ["written by pickle rather than torch.save"], [], []),
    "r28-torch-zip-with-an-object": (["reference", "--checkpoint", "{p}/evil_zip.pt"], 2,
                                     ["holds pickled Python objects"], ["{p}/PWNED"], []),
    "r29-state-dict-as-model": (["{p}/plain.pth"], 2, ["is not a pruned checkpoint", "--checkpoint"], [], []),
    "r29-spec-format-99": (["{p}/spec99.pt"], 2, ["format 99; this version reads format 2"], [], []),
    "r23-spec-of-another-form": (["{p}/badspec.pt"], 2, ["not written by dimap-struct, or is damaged"], [], []),
    "r31-empty-checkpoint": (["reference", "--checkpoint", "{p}/zero.pt"], 2, ["is an empty file"], [], []),
    "r31-output-only-an-extension": (["reference", "-o", "{p}/.onnx"], 2, ["is only an extension"], [], []),
    "r31-output-empty": (["reference", "-o", ""], 2, ["output name is empty"], [], []),
    "r32-from-pt-is-a-directory": (["--from-pt", "{p}/adir.pth"], 2, ["is a directory, not a regular file"], [], []),
    "r32-checkpoint-under-a-file": (["reference", "--checkpoint", "{p}/afile/x.pth"], 2,
                                    ["afile is a file, not a directory"], [], []),
    "r35-flat-folder-calibrates": (["reference", "--calib-data", "{p}/flat", "--calib-images", "4", "--json"], 0,
                                   [], [], []),
    "r35-flat-folder-int8-static": (["reference", "--calib-data", "{p}/flat", "--calib-images", "4", "--quantize",
                                     "int8-static", "-o", "{p}/q35.onnx"], 0, [], [], ["{p}/q35.onnx"]),
    "r35-flat-folder-for-taylor": (["reference", "--criterion", "taylor", "--calib-data", "{p}/flat",
                                    "--calib-images", "4"], 2,
                                   ["--criterion taylor needs labelled calibration data"], [], []),
    "r32-config-is-a-device": (["--config", "{p}/zero.yaml"], 2, ["is a character device, not a regular file"],
                               [], []),
    "bad-budget": (["reference", "--flops", "1.5"], 2, ["0 < R <= 1"], [], []),
    "calib-images-zero": (["reference", "--calib-data", "{p}/ten", "--calib-images", "0"], 2,
                          ["--calib-images must be an integer >= 1"], [], []),
    "calib-images-more-than-the-data": (["reference", "--calib-data", "{p}/ten", "--calib-images", "50"], 2,
                                        ["--calib-images 50: the calibration data has only 8 images"], [], []),
    "calib-data-of-more-classes": (["reference", "--calib-data", "{p}/twelve"], 2,
                                   ["has 12 classes, the model predicts only 10"], [], []),
    "unknown-model": (["swin_tt"], 2, ["unknown model 'swin_tt'"], [], []),
    "missing-checkpoint-as-model": (["{p}/missing.pt"], 2, ["model file not found", "missing.pt"], [], []),
    "quantize-unknown-scheme": (["reference", "--quantize", "int4", "-o", "{p}/q.onnx"], 2,
                                ["--quantize must be one of int8, int8-dynamic, int8-static"], ["{p}/q.onnx"], []),
    "quantize-static-without-data": (["reference", "--quantize", "int8-static", "-o", "{p}/q.onnx"], 2,
                                     ["give --calib-data PATH"], ["{p}/q.onnx"], []),
}

EVAL = {
    "10-grey-model-on-colour-folder": (["{p}/gray.onnx", "--data", "{p}/photos", "--split", "all"], 0, [], [], []),
    "11-truncated-jpeg": (["{p}/gray.onnx", "--data", "{p}/truncated", "--split", "all"], 2,
                          ["cannot read image", "truncated.jpg"], [], []),
    "11-garbage-jpeg": (["{p}/gray.onnx", "--data", "{p}/garbage", "--split", "all"], 2,
                        ["cannot read image", "garbage.jpg: not an image file"], [], []),
    "13-seed-overflow": (["swin_t", "--no-pretrained", "--seed=99999999999999999999"], 2, ["--seed"], [], []),
    "20-thousand-outputs-ten-classes": (["swin_t", "--no-pretrained", "--data", "{p}/ten", "--split", "all",
                                         "--limit", "2"], 0, ["warning", "1000 outputs", "10 classes"], [], []),
    "21-missing-model-file": (["{p}/nothing.onnx"], 2, ["not found"], [], []),
    "21-missing-data": (["{p}/gray.onnx", "--data", "{p}/nowhere"], 2, ["data directory not found"], [], []),
    "22-model-is-a-directory": (["{p}/d/dir.onnx"], 2, ["is a directory"], [], []),
    "bad-split": (["{p}/gray.onnx", "--split", "test"], 2, ["--split"], [], []),
    "foreign-onnx": (["{p}/foreign.onnx", "--data", "{p}/photos"], 2, ["has no dimap_struct metadata"], [], []),
    "r23-metadata-of-another-form": (["{p}/wrong_schema.onnx", "--data", "{p}/photos"], 2,
                                     ["not written by dimap-struct, or is damaged"], [], []),
    "r35-flat-folder-to-evaluate": (["{p}/gray.onnx", "--data", "{p}/flat"], 2,
                                    ["holds images but no class folders"], [], []),
    "r13-model-is-a-fifo": (["{p}/fifo.pt"], 2, ["is a FIFO (named pipe), not a regular file"], [], []),
    "unknown-runtime": (["{p}/gray.onnx", "--runtime", "tensorrt"], 2, ["--runtime must be one of"], [], []),
    "openvino-on-a-model-name": (["reference", "--runtime", "openvino"], 2, ["runs .onnx files"], [], []),
}

FINETUNE = {
    "12-lr-nan": (["reference", "-o", "{p}/f.onnx", "--lr", "nan"], 2, ["--lr must be a finite number"],
                  ["{p}/f.onnx"], []),
    "13-seed-overflow": (["reference", "-o", "{p}/f.onnx", "--seed=99999999999999999999"], 2, ["--seed"], [], []),
    "14-unwritable-directory": (["reference", "-o", "/proc/f.onnx"], 2, ["not writable"], [], []),
    "22-directory-is-a-file": (["reference", "-o", "{p}/afile/f.onnx"], 2, ["is a file, not a directory"], [], []),
    "no-output": (["reference"], 2, ["-o OUT.onnx"], [], []),
    "r1-resume-that-runs-code": (["reference", "-o", "{p}/r_evil.onnx", "--resume"], 2,
                                 ["holds pickled Python objects"], ["{p}/PWNED_RESUME", "{p}/r_evil.onnx"], []),
    "r18-resume-empty": (["reference", "-o", "{p}/r_empty.onnx", "--resume"], 2,
                         ["r_empty.resume.pt is an empty file"], [], []),
    "r18-resume-a-list": (["reference", "-o", "{p}/r_list.onnx", "--resume"], 2,
                          ["r_list.resume.pt was not written by dimap-struct, or is damaged"], [], []),
    "r18-resume-with-nan": (["reference", "-o", "{p}/r_nan.onnx", "--resume"], 2,
                            ["r_nan.resume.pt has non-finite weights"], [], []),
    "r18-resume-truncated": (["reference", "-o", "{p}/r_cut.onnx", "--resume"], 2,
                             ["cannot read resume state", "r_cut.resume.pt"], [], []),
    "epochs-zero": (["reference", "-o", "{p}/f.onnx", "--epochs", "0"], 2, ["--epochs"], [], []),
    "steps-zero": (["reference", "-o", "{p}/f.onnx", "--steps", "0"], 2, ["--steps must be an integer >= 1"], [], []),
    "steps-over-the-budget": (["reference", "-o", "{p}/f.onnx", "--steps", "3", "--max-steps", "2"], 2,
                              ["--steps 3 needs at least one training step per round"], [], []),
    "steps-with-resume": (["reference", "-o", "{p}/f.onnx", "--steps", "2", "--resume"], 2,
                          ["does not work with --steps > 1"], [], []),
    "weight-granularity": (["reference", "-o", "{p}/f.onnx", "--granularity", "weight"], 2,
                           ["dimap-finetune prunes structurally"], ["{p}/f.onnx"], []),
    "save-every-zero": (["reference", "-o", "{p}/f.onnx", "--save-every", "0"], 2,
                        ["--save-every must be an integer >= 1"], ["{p}/f.onnx"], []),
    "workers-negative": (["reference", "-o", "{p}/f.onnx", "--workers", "-1"], 2,
                         ["--workers must be an integer >= 0"], ["{p}/f.onnx"], []),
    "log-every-zero": (["reference", "-o", "{p}/f.onnx", "--log-every", "0"], 2,
                       ["--log-every must be an integer >= 1"], ["{p}/f.onnx"], []),
    "accum-steps-not-dividing": (["reference", "-o", "{p}/f.onnx", "--batch-size", "64", "--accum-steps", "3"], 2,
                                 ["--accum-steps 3 does not divide --batch-size 64"], ["{p}/f.onnx"], []),
    "mixup-odd-batch": (["reference", "-o", "{p}/f.onnx", "--batch-size", "7", "--mixup", "0.8"], 2,
                        ["--batch-size 7 must be even"], ["{p}/f.onnx"], []),
    "sched-unknown": (["reference", "-o", "{p}/f.onnx", "--sched", "step"], 2, ["--sched must be one of"], [], []),
    "unknown-optimizer": (["reference", "-o", "{p}/f.onnx", "--opt", "adamww"], 2,
                          ["--opt 'adamww' is not one of timm's optimizers (did you mean"], ["{p}/f.onnx"], []),
    "amp-unknown": (["reference", "-o", "{p}/f.onnx", "--amp", "fp8"], 2, ["--amp must be one of"], [], []),
    **({} if torch.cuda.is_available() else {  # a single process trains on the GPU when there is one
        "amp-fp16-on-a-cpu": (["reference", "-o", "{p}/f.onnx", "--amp", "fp16"], 2,
                              ["--amp fp16 needs a CUDA device"], ["{p}/f.onnx"], [])}),
}

BENCH = {
    "21-missing-file": (["{p}/nothing.onnx"], 2, ["not found"], [], []),
    "21-threads-zero": (["{p}/gray.onnx", "--threads", "0"], 2, ["--threads"], [], []),
    "14-unwritable-md": (["{p}/gray.onnx", "--md", "/proc/t.md"], 2, ["not writable"], [], []),
    "22-md-under-a-file": (["{p}/gray.onnx", "--md", "{p}/afile/t.md"], 2, ["is a file, not a directory"], [], []),
    "existing-json": (["{p}/gray.onnx", "--json-out", "{p}/taken.json"], 2, ["already exists"], [], []),
    "r2-md-is-an-input": (["{p}/gray.onnx", "{p}/foreign.onnx", "--md", "{p}/foreign.onnx", "--force"], 2,
                          ["--md", "foreign.onnx must end in .md"], [], []),
    "r2-json-out-is-an-input": (["{p}/gray.onnx", "--json-out", "{p}/gray.onnx", "--force"], 2,
                                ["--json-out", "must end in .json"], [], []),
    "r2-output-is-an-input-by-link": (["{p}/gray.onnx", "{p}/gray_link.md", "--md", "{p}/gray_link.md", "--force"],
                                      2, ["--md", "is also an input"], [], []),
    "unknown-runtime": (["{p}/gray.onnx", "--runtime", "tvm"], 2, ["--runtime must be among"], [], []),
    "foreign-onnx-with-torch": (["{p}/foreign.onnx", "--torch"], 2, ["records no architecture"], [], []),
    "foreign-onnx-with-plot": (["{p}/foreign.onnx", "--plot", "{p}/p.png"], 2, ["has none in its metadata"],
                               ["{p}/p.png"], []),
}


def _needs(row):
    if any("{mnist}" in a for a in row[0]) and mnist_dir() is None:
        pytest.skip("needs the shared MNIST")


@pytest.mark.parametrize("row", COMPRESS.values(), ids=COMPRESS.keys())
def test_compress(row, place, capsys):
    _needs(row)
    _check(compress.main, "dimap-compress", row, place, capsys)


@pytest.mark.parametrize("row", EVAL.values(), ids=EVAL.keys())
def test_eval(row, place, capsys):
    _check(eval_cli.main, "dimap-eval", row, place, capsys)


@pytest.mark.parametrize("row", FINETUNE.values(), ids=FINETUNE.keys())
def test_finetune(row, place, capsys):
    _check(finetune.main, "dimap-finetune", row, place, capsys)


@pytest.mark.parametrize("row", BENCH.values(), ids=BENCH.keys())
def test_bench(row, place, capsys):
    _check(bench.main, "dimap-bench", row, place, capsys)


@pytest.mark.parametrize("model", [123, None, 0.5, ["swin_t"]])
def test_19_api_rejects_what_is_not_a_model(model):
    from dimap_struct.errors import UserError
    from dimap_struct.pipeline import compress as compress_api

    with pytest.raises(UserError, match="model must be a name, a path or an nn.Module"):
        compress_api(model, 0.5)


def test_checkpoint_layouts_load_the_same_weights(place):
    """EMA keys and DDP prefixes give the very weights of the plain file."""
    from dimap_struct.models import load_model

    plain = load_model("reference", checkpoint=place / "plain.pth").model.state_dict()
    for name in ("ema.pth", "ddp.pth", "compiled_ddp.pth", "timm_train.pth"):
        loaded = load_model("reference", checkpoint=place / name)
        assert all(torch.equal(plain[k], v) for k, v in loaded.model.state_dict().items()), name
        assert ("key '" in loaded.weights) == (name != "compiled_ddp.pth")  # the container key is named

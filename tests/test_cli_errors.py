"""The CLI's one error boundary (issue 11, defects 7, 10, 11, 12): user-fixable problems end in one
line on stderr and exit 2, weights that can carry code are refused unless this command line trusts
them, and the commands that load weights take --trust-checkpoint and --weights."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from clefctl import cli
from clefctl.errors import ClefError
from clefctl.model import create, read_weights_file, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(args, capsys, cwd=None):
    """clefctl in-process: (exit code, stdout, stderr)."""
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main(list(args))
    finally:
        os.chdir(old)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in errors[0], errors[0]


class Opaque:
    """An object that weights_only loading refuses (it needs arbitrary unpickling)."""

    def __init__(self):
        self.payload = torch.zeros(2)


# ------------------------------------------------------------------------- weight files (7, 10, 12)

def test_text_file_and_random_bytes_as_weights_are_one_line(tmp_path, synth, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(4096).replace(b"\x80", b"\x00"))
    for f in (text, noise):
        code, _, err = run_cli(["embed", "--dataset", "synthetic-fer", "--dataset-root", synth["fer"],
                                "--weights", str(f), "--arch", "clef-tiny", "--workspace", str(tmp_path / "ws"),
                                "--index", "none"], capsys)
        assert_one_line_error(code, err, str(f), "not a weights file")
        assert "trust-checkpoint" not in err  # random bytes do not "need unpickling"


def test_truncated_checkpoint_is_corrupt_not_untrusted(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, create("clef-tiny"), {"stage": "pretrain"})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ClefError, match="corrupt or cut short") as exc:
        read_weights_file(cut)
    assert "trust-checkpoint" not in str(exc.value)


def test_pickle_with_objects_refused_then_trusted(tmp_path):
    p = tmp_path / "objects.pt"
    torch.save({"state_dict": {}, "extra": Opaque()}, p)
    with pytest.raises(ClefError, match="arbitrary unpickling") as exc:
        read_weights_file(p)
    assert "--trust-checkpoint" in str(exc.value) and "Opaque" in str(exc.value)
    obj, container = read_weights_file(p, trust_checkpoint=True)
    assert container == "pickle" and isinstance(obj["extra"], Opaque)


def test_failure_under_trust_checkpoint_is_one_line(tmp_path, capsys):
    """A trusted pickle whose class no longer exists: one line, exit 2, no traceback."""
    mod = tmp_path / "gone_module.py"
    mod.write_text("import torch\nclass Gone:\n    def __init__(self):\n        self.t = torch.ones(1)\n")
    p = tmp_path / "needs_gone.pt"
    code = (f"import sys, torch; sys.path.insert(0, {str(tmp_path)!r}); import gone_module; "
            f"torch.save({{'state_dict': {{}}, 'x': gone_module.Gone()}}, {str(p)!r})")
    subprocess.run([sys.executable, "-c", code], check=True)
    mod.unlink()
    code, _, err = run_cli(["explain", str(p), "--checkpoint", str(p), "--text", "a smile", "--trust-checkpoint",
                            "--out", str(tmp_path / "x.png")], capsys)
    assert_one_line_error(code, err, "even with --trust-checkpoint")


def test_torchscript_needs_trust(tmp_path):
    clip = create("clef-tiny").clip
    traced = torch.jit.trace_module(clip, {"encode_image": torch.rand(1, 3, 64, 64)}, check_trace=False)
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(traced, str(path))
    with pytest.raises(ClefError, match="TorchScript archive, whose code runs") as exc:
        read_weights_file(path)
    assert "--trust-checkpoint" in str(exc.value)
    sd, container = read_weights_file(path, trust_checkpoint=True)
    assert container == "torchscript" and "logit_scale" in sd


@pytest.mark.parametrize("command", ["embed", "query", "rescore", "predict", "explain", "evaluate",
                                     "pretrain", "finetune"])
def test_every_command_that_loads_weights_takes_trust_checkpoint(command, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and "--trust-checkpoint" in out
    if command in ("embed", "query", "rescore"):
        assert "--weights" in out


# ------------------------------------------------------------------ OS errors: EROFS, ENOSPC (7)

def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


@pytest.fixture
def readonly_dir(tmp_path, monkeypatch):
    """A read-only directory: a real read-only tmpfs where this machine allows mounts (it does here,
    as root), else every new file in it fails with an injected EROFS."""
    d = tmp_path / "ro"
    mounted = _mount_tmpfs(d, "ro,size=1m")
    if not mounted:
        real_mkstemp, real_mkdir = __import__("tempfile").mkstemp, Path.mkdir

        def mkstemp(*a, dir=None, **k):
            if dir is not None and str(dir).startswith(str(d)):
                raise OSError(errno.EROFS, "Read-only file system", str(dir))
            return real_mkstemp(*a, dir=dir, **k)

        def mkdir(self, *a, **k):
            if str(self).startswith(str(d)) and str(self) != str(d):
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real_mkdir(self, *a, **k)

        d.mkdir(exist_ok=True)
        monkeypatch.setattr("tempfile.mkstemp", mkstemp)
        monkeypatch.setattr(Path, "mkdir", mkdir)
    yield d
    if mounted:
        subprocess.run(["umount", str(d)], check=False)


@pytest.fixture
def full_dir(tmp_path, monkeypatch):
    """A directory on a full disk: a real 64 KiB tmpfs, filled; else writes fail with injected ENOSPC."""
    d = tmp_path / "full"
    mounted = _mount_tmpfs(d, "size=64k")
    if mounted:
        try:
            with open(d / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
    else:
        d.mkdir(exist_ok=True)
        real_open = open

        def fake_open(file, mode="r", *a, **k):
            if any(c in mode for c in "wax") and str(file).startswith(str(d)):
                raise OSError(errno.ENOSPC, "No space left on device", str(file))
            return real_open(file, mode, *a, **k)

        monkeypatch.setattr("builtins.open", fake_open)
    yield d
    if mounted:
        subprocess.run(["umount", str(d)], check=False)


def test_read_only_workspace_is_one_line(readonly_dir, synth, capsys):
    code, _, err = run_cli(["pretrain", "--dataset-root", synth["au"], "--workspace", str(readonly_dir / "ws"),
                            "--max-steps", "1", "--no-progress"], capsys)
    assert_one_line_error(code, err, "read-only", str(readonly_dir))


def test_full_disk_is_one_line_with_advice(full_dir, tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "face.png"
    Image.new("RGB", (64, 64), (128, 100, 90)).save(img)
    weights = tmp_path / "m.pt"
    save_checkpoint(weights, create("clef-tiny"), {"stage": "finetune", "task": "fer",
                                                   "classes": ["happy", "sad"]},
                    extras={"name_embeddings": torch.nn.functional.normalize(torch.randn(2, 128), dim=-1)})
    code, _, err = run_cli(["predict", str(img), "--fer-checkpoint", str(weights), "--out", str(full_dir / "out.csv")],
                           capsys)
    assert_one_line_error(code, err, "no space left", "run the same command again")
    assert not (full_dir / "out.csv").exists()


def test_os_error_message_names_file_and_advice():
    msg = cli.os_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/store.h5"))
    assert "/data/store.h5" in msg and "free some space" in msg
    msg = cli.os_error_message(OSError(errno.EROFS, "Read-only file system", "/mnt/x"))
    assert "read-only" in msg and "/mnt/x" in msg


def test_programming_errors_keep_their_traceback(monkeypatch):
    import click

    @click.command("boom")
    def boom():
        raise ValueError("a bug, not a user error")

    monkeypatch.setitem(cli.COMMANDS, "boom", f"{__name__}:_BOOM")
    monkeypatch.setattr(sys.modules[__name__], "_BOOM", boom, raising=False)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["boom"])


def test_non_utf8_prompt_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("dataset: mine\ntask: fer\nclasses:\n  - id: joie\n    name: joie \xe9clatante\n".encode("latin-1"))
    code, _, err = run_cli(["rescore", "--prompts", str(bad), "--store", str(tmp_path / "none.h5"),
                            "--weights", "random", "--arch", "clef-tiny"], capsys)
    assert code == 2 and "Traceback" not in err and err.count("error: ") == 1


# ------------------------------------------------------------------ warnings and long texts (11)

def test_long_text_is_reported_as_cut():
    m = create("clef-tiny")
    with pytest.warns(UserWarning, match="longer than the model's 48-token context and is cut"):
        m.encode_texts(["the lips are pressed together " * 12])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.encode_texts(["a photo of a person with lip corner puller."])


def test_warnings_print_as_one_line_without_source(capsys):
    code, _, _ = run_cli(["info", "--json"], capsys)
    assert code == 0
    try:
        warnings.warn_explicit("something odd", UserWarning, "/site-packages/torch/x.py", 12)
        err = capsys.readouterr().err
    finally:
        warnings.showwarning = warnings._showwarning_orig if hasattr(warnings, "_showwarning_orig") \
            else warnings.showwarning
    assert err.strip() == "warning: something odd"


# ------------------------------------------------------------- stores from another folder (6, 10)

def test_rescore_takes_weights_for_a_store_written_with_out(tmp_path, synth, capsys):
    store = tmp_path / "s.h5"
    code, _, err = run_cli(["embed", "--dataset", "synthetic-fer", "--dataset-root", synth["fer"], "--weights",
                            "random", "--arch", "clef-tiny", "--out", str(store), "--index", "none",
                            "--workspace", str(tmp_path / "ws"), "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["rescore", "--store", str(store), "--weights", "random", "--arch", "clef-tiny",
                              "--prompts", "synthetic-fer", "--json"], capsys)
    assert code == 0, err
    assert '"images"' in out
    code, _, err = run_cli(["rescore", "--store", str(store), "--prompts", "synthetic-fer"], capsys)
    assert code == 0, err                     # the store names its model (issue 22): no --weights needed


def test_relative_weights_work_from_another_folder(tmp_path, synth, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    save_checkpoint(a / "model.pt", create("clef-tiny"), {"stage": "pretrain"})
    ws = tmp_path / "ws"
    code, _, err = run_cli(["embed", "--dataset", "synthetic-fer", "--dataset-root", synth["fer"], "--weights",
                            "model.pt", "--workspace", str(ws), "--index", "none", "--json"], capsys, cwd=a)
    assert code == 0, err
    code, out, err = run_cli(["query", "a smiling face", "--workspace", str(ws), "--json", "-k", "3"], capsys, cwd=b)
    assert code == 0, err
    assert '"hits"' in out

"""Weights you can trust and share (issue 14): the registry, checked and resumable downloads from a
test-owned HTTP server on 127.0.0.1, Hugging Face Hub loading from a hand-laid cache with
HF_HUB_OFFLINE=1, and the export round trip. Nothing here reaches the network."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
import torch
from PIL import Image

from clefctl.errors import ClefError
from clefctl.weights import registry
from clefctl.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_thread")

FARL_FILE = "FaRL-Base-Patch16-LAIONFace20M-ep64.pth"


# ----------------------------------------------------------------------------------------------
# Helpers: a Range-capable server that can break a transfer off, the CLI in-process
# ----------------------------------------------------------------------------------------------


class Server:
    """Serves ``files`` ({name: bytes}); ``drop[name] = n`` makes the next request of ``name``
    send the full headers but only n bytes, then close the connection. ``requests`` logs
    (path, Range header) of every request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                owner.requests.append((name, rng))
                body = owner.files.get(name)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                part = body[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                cut = owner.drop.pop(name, None)
                self.wfile.write(part if cut is None else part[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private weights folder, cache and Hugging Face cache; HF offline."""
    monkeypatch.setenv("CLEF_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("CLEF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv(registry.MIRROR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture
def server(env, monkeypatch):
    s = Server()
    monkeypatch.setenv(registry.MIRROR_ENV, s.url + "/")
    yield s
    s.close()


def one_line_error(code, err) -> str:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def blob(n: int = 3 << 20, seed: int = 0) -> bytes:
    """A PyTorch checkpoint (what a .pth download must be) of a little over ``n`` random bytes."""
    import io

    buf = io.BytesIO()
    data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    torch.save({"state_dict": {"w": torch.from_numpy(data)}}, buf)
    return buf.getvalue()


def tiny_farl_file(path: Path) -> Path:
    """A FaRL-shaped release file of clef-tiny: {"state_dict": CLIP keys + the MIM head keys}."""
    from clefctl.model import create

    sd = dict(create("clef-tiny", seed=3).clip.state_dict())
    sd["visual.mask_token"] = torch.zeros(1, 1, 128)
    sd["visual.lm_head.weight"] = torch.zeros(64, 128)
    torch.save({"state_dict": sd}, path)
    return path


# ----------------------------------------------------------------------------------------------
# Registry and downloads
# ----------------------------------------------------------------------------------------------


def test_registry_lists_farl_and_openai_with_nulls_where_unknown(env, capsys):
    code, out, _ = run_cli(["weights", "list", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    for name, file in (("farl-ep16", "FaRL-Base-Patch16-LAIONFace20M-ep16.pth"), ("farl-ep64", FARL_FILE),
                       ("farl-50m-ep16", "FaRL-Base-Patch16-LAIONFace50M-ep16.pth")):
        r = rows[name]
        assert r["arch"] == "ViT-B-16-quickgelu"
        assert r["url"] == "https://github.com/FacePerceiver/FaRL/releases/download/pretrained_weights/" + file
        assert r["size"] is None and r["sha256"] is None and r["path"] is None
    oa = rows["openai-vit-b-16"]
    import open_clip

    url = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["url"]
    assert oa["url"] == url and oa["sha256"] == url.split("/")[-2] and len(oa["sha256"]) == 64
    assert set(oa) >= {"name", "arch", "url", "size", "sha256", "path"}


def test_get_downloads_records_and_checks_again(server, capsys, env):
    data = tiny_farl_file(env / "tiny.pth").read_bytes()
    server.files[FARL_FILE] = data
    code, out, err = run_cli(["weights", "get", "farl-ep64", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    target = env / "weights" / FARL_FILE
    assert res["status"] == "downloaded" and res["path"] == str(target) and res["checksum"] == "recorded-now"
    assert target.read_bytes() == data and not target.with_name(FARL_FILE + ".part").exists()
    rec = json.loads((env / "weights" / "checksums.json").read_text())[FARL_FILE]
    assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["size"] == len(data)
    assert server.requests == [(FARL_FILE, None)]
    code, out, _ = run_cli(["weights", "get", "farl-ep64", "--json"], capsys)  # there: checked, not fetched
    assert json.loads(out)["status"] == "present" and json.loads(out)["checksum"] == "matches-record"
    assert code == 0 and len(server.requests) == 1
    code, out, _ = run_cli(["weights", "list", "--json"], capsys)
    row = next(r for r in json.loads(out) if r["name"] == "farl-ep64")
    assert row["path"] == str(target) and row["sha256"] == rec["sha256"] and row["size"] == len(data)
    code, out, _ = run_cli(["weights", "verify", "farl-ep64", "--json"], capsys)
    rep = json.loads(out)
    assert code == 0 and rep["matches"] is True and rep["checksum"] == "recorded" and rep["source"] == "farl"


def test_dropped_connection_resumes_byte_identical(server, capsys, env):
    data = blob(seed=1)
    server.files[FARL_FILE] = data
    server.drop[FARL_FILE] = 1_234_567  # the first connection breaks off here
    code, out, err = run_cli(["weights", "get", "farl-ep64", "--json", "--no-progress"], capsys)
    assert code == 0, err
    assert server.requests == [(FARL_FILE, None), (FARL_FILE, "bytes=1234567-")]
    assert (env / "weights" / FARL_FILE).read_bytes() == data


def test_killed_download_resumes_from_its_part(server, capsys, env):
    data = blob(seed=2)
    server.files[FARL_FILE] = data
    part = env / "weights" / (FARL_FILE + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:2_000_000])  # what a killed `get` left behind
    code, out, err = run_cli(["weights", "get", "farl-ep64", "--json"], capsys)
    assert code == 0, err
    assert server.requests == [(FARL_FILE, "bytes=2000000-")] and json.loads(out)["resumed_from"] == 2_000_000
    assert (env / "weights" / FARL_FILE).read_bytes() == data and not part.exists()


def test_changed_file_is_refused_and_nothing_is_lost(server, capsys, env):
    good = blob(seed=3)
    server.files[FARL_FILE] = good
    assert run_cli(["weights", "get", "farl-ep64"], capsys)[0] == 0
    record = (env / "weights" / "checksums.json").read_text()
    server.files[FARL_FILE] = blob(seed=4)  # the release changed (or a mirror serves another file)
    code, _, err = run_cli(["weights", "get", "farl-ep64", "--force"], capsys)
    line = one_line_error(code, err)
    assert "refusing" in line and FARL_FILE in line and "recorded" in line
    assert (env / "weights" / FARL_FILE).read_bytes() == good
    assert not (env / "weights" / (FARL_FILE + ".part")).exists()
    assert (env / "weights" / "checksums.json").read_text() == record
    # a damaged copy on disk is found by verify (exit 2) and by get
    (env / "weights" / FARL_FILE).write_bytes(good[:-5000] + bytes([good[-5000] ^ 1]) + good[-4999:])
    code, _, err = run_cli(["weights", "verify", "farl-ep64"], capsys)
    assert "differs" in one_line_error(code, err)
    code, _, err = run_cli(["weights", "get", "farl-ep64"], capsys)
    assert "differs" in one_line_error(code, err)


def test_mirror_answering_an_error_page_is_refused_before_anything_is_recorded(server, capsys, env):
    """Issue 22, item 4: a mirror that answers 200 with a 61-byte HTML page (or a cut file) is not
    recorded as FaRL's release, so the real file is still accepted afterwards."""
    page = b"<html><body>429 Too Many Requests, retry later</body></html>\n"
    assert len(page) == 61
    server.files[FARL_FILE] = page
    code, _, err = run_cli(["weights", "get", "farl-ep64"], capsys)
    line = one_line_error(code, err)
    assert "refusing" in line and "HTML page of 61 bytes" in line and "nothing was recorded" in line
    weights = env / "weights"
    assert not (weights / FARL_FILE).exists() and not (weights / (FARL_FILE + ".part")).exists()
    assert not (weights / "checksums.json").exists()
    real = blob(seed=5)
    server.files[FARL_FILE] = real[: len(real) // 2]   # a server that stops half-way, length announced as half
    code, _, err = run_cli(["weights", "get", "farl-ep64"], capsys)
    assert "not a PyTorch checkpoint" in one_line_error(code, err)
    assert not (weights / "checksums.json").exists()
    server.files[FARL_FILE] = real
    code, out, err = run_cli(["weights", "get", "farl-ep64", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["sha256"] == hashlib.sha256(real).hexdigest()
    # a page put in the folder by hand is not recorded either
    (weights / FARL_FILE.replace("ep64", "ep16")).write_bytes(page * 40)
    code, _, err = run_cli(["weights", "get", "farl-ep16"], capsys)
    assert "HTML page" in one_line_error(code, err)
    assert FARL_FILE.replace("ep64", "ep16") not in json.loads((weights / "checksums.json").read_text())


def _onnx_bytes(graph: bytes = b"\x0a\x04node" * 300) -> bytes:
    """A ModelProto's top-level fields: ir_version 8, producer_name, graph (7), opset_import (8)."""
    def ld(field: int, body: bytes) -> bytes:
        n, out = len(body), b""
        while True:
            out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                break
        return bytes([field << 3 | 2]) + out + body
    return b"\x08\x08" + ld(2, b"test") + ld(7, graph) + ld(8, b"\x10\x0d")


def test_check_format_reads_each_kind_by_its_structure(tmp_path):
    from safetensors.torch import save_file

    from clefctl.weights.fileformat import check_format, kind_of

    assert [kind_of(n) for n in ("a.pth", "b.PT", "c.onnx", "d.safetensors", "e.tar")] == [
        "torch", "torch", "onnx", "safetensors", None]
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(_onnx_bytes())
    assert check_format(onnx, "onnx") is None
    onnx.write_bytes(_onnx_bytes()[:-5])
    assert "cut short" in check_format(onnx, "onnx")
    onnx.write_bytes(blob(4000))
    assert "not an ONNX model" in check_format(onnx, "onnx")
    st = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1000)}, str(st))
    assert check_format(st, "safetensors") is None
    st.write_bytes(st.read_bytes()[:-8])
    assert "cut or padded" in check_format(st, "safetensors")
    legacy = tmp_path / "old.pth"
    torch.save({"w": torch.zeros(1000)}, legacy, _use_new_zipfile_serialization=False)
    assert check_format(legacy, "torch") is None
    legacy.write_text("x" * 2000)
    assert "text of 2000 bytes" in check_format(legacy, "torch")


def test_404_and_unreachable_host_are_one_clear_line(server, capsys, env, monkeypatch):
    code, _, err = run_cli(["weights", "get", "farl-ep16"], capsys)  # the server has no such file
    line = one_line_error(code, err)
    file = "FaRL-Base-Patch16-LAIONFace20M-ep16.pth"
    assert "404" in line and f"{server.url}/{file}" in line and str(env / "weights" / file) in line
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(registry.MIRROR_ENV, f"http://127.0.0.1:{port}")
    code, _, err = run_cli(["weights", "get", "farl-ep16"], capsys)
    line = one_line_error(code, err)
    assert f"http://127.0.0.1:{port}/{file}" in line and "by hand" in line and str(env / "weights" / file) in line
    assert not (env / "weights" / file).exists()


def test_names_resolve_through_the_one_resolver(server, env, monkeypatch):
    tiny = tiny_farl_file(env / "tiny.pth")
    server.files["tiny-farl.pth"] = tiny.read_bytes()
    monkeypatch.setitem(registry.REGISTRY, "tiny-farl",
                        registry.WeightsEntry("tiny-farl", "clef-tiny", "test weights", "tiny-farl.pth",
                                              "http://unused/"))
    ws = Workspace(env / "ws")
    choice = ws.resolve_model("tiny-farl", arch="ViT-B-16")  # downloads: it is missing
    assert choice.weights == str(env / "weights" / "tiny-farl.pth") and choice.arch == "clef-tiny"
    m = choice.load()
    assert m.load_report.source == "farl" and m.quick_gelu and m.arch == "clef-tiny"
    assert len(server.requests) == 1
    ws.resolve_model("tiny-farl")  # present: no second download
    assert len(server.requests) == 1
    server.files[FARL_FILE] = blob(1000)
    # the registry's architecture unless the one asked for has the same shapes
    assert ws.resolve_model("farl-ep64", arch="clef-tiny").arch == "ViT-B-16-quickgelu"
    assert ws.resolve_model("farl-ep64", arch="ViT-B-16").arch == "ViT-B-16"
    oa = ws.resolve_model("openai-vit-b-16", arch="clef-tiny")
    assert (oa.weights, oa.arch) == ("openai", "ViT-B-16-quickgelu")  # open_clip's own tag


def test_verify_reports_format_and_architecture(env, capsys):
    from clefctl.model import create, save_checkpoint

    farl = tiny_farl_file(env / "farl.pth")
    code, out, err = run_cli(["weights", "verify", str(farl), "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["source"] == "farl" and rep["format"] == "pickle" and "clef-tiny" in rep["arch"]
    assert rep["sha256"] == hashlib.sha256(farl.read_bytes()).hexdigest() and rep["size"] == farl.stat().st_size
    ck = save_checkpoint(env / "model.pt", create("clef-tiny"), {"stage": "pretrain"})
    rep = json.loads(run_cli(["weights", "verify", str(ck), "--json"], capsys)[1])
    assert rep["source"] == "clefctl" and rep["arch"] == ["clef-tiny"]
    code, _, err = run_cli(["weights", "verify", "farl-ep64"], capsys)
    assert "not downloaded" in one_line_error(code, err)


# ----------------------------------------------------------------------------------------------
# Hugging Face Hub: a cache laid out by hand, HF_HUB_OFFLINE=1
# ----------------------------------------------------------------------------------------------


def lay_hub_cache(hf_home: Path, repo: str, files: dict[str, Path | bytes]) -> Path:
    """``models--ORG--NAME/snapshots/<rev>/`` with ``refs/main`` -> rev, as huggingface_hub keeps it."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    base = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    for name, content in files.items():
        (snap / name).write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
    return snap


def test_hf_hub_open_clip_model_loads_offline(env):
    """A plain open_clip model on the Hub (no clefctl.json): its config is registered and its weights load."""
    import open_clip
    from safetensors.torch import save_file

    from clefctl.model import create

    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                                           "patch_size": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    torch.manual_seed(5)
    src = open_clip.CLIP(**cfg).eval()
    (env / "w.safetensors").write_bytes(b"")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(env / "w.safetensors"))
    conf = json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}})
    lay_hub_cache(env / "hf", "some-lab/tiny-clip", {"open_clip_config.json": conf.encode(),
                                                      "open_clip_model.safetensors": env / "w.safetensors"})
    m = create(weights="hf-hub:some-lab/tiny-clip")
    assert m.arch.startswith("hub-") and m.load_report.source == "open_clip-hub" and m.meta == {}
    assert m.mean == (0.5, 0.5, 0.5)
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = torch.nn.functional.normalize(src.encode_image(px), dim=-1)
    assert torch.allclose(m.encode_images(px), want, atol=1e-6)
    with pytest.raises(ClefError, match="HF_HUB_OFFLINE"):
        Workspace(env / "ws").resolve_model("hf-hub:some-lab/not-cached")


def test_openai_entry_is_found_in_open_clip_cache(env, capsys):
    lay_hub_cache(env / "hf", "timm/vit_base_patch16_clip_224.openai", {"open_clip_model.safetensors": b"x" * 10})
    rows = {r["name"]: r for r in json.loads(run_cli(["weights", "list", "--json"], capsys)[1])}
    assert rows["openai-vit-b-16"]["path"].endswith("open_clip_model.safetensors")
    code, out, err = run_cli(["weights", "get", "openai-vit-b-16", "--json"], capsys)
    assert code == 0 and json.loads(out)["status"] == "present", err


# ----------------------------------------------------------------------------------------------
# Export round trip
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    """A fine-tuned clef-tiny AU model (a few steps) with an evaluate report."""
    from clefctl.engine import TrainConfig
    from clefctl.evaluate import evaluate_checkpoint
    from clefctl.finetune import FinetuneOptions, run_finetune

    ws = str(tmp_path_factory.mktemp("ws"))
    run = run_finetune(FinetuneOptions(dataset="bp4d", dataset_root=synth["au"], workspace=ws, init=None, folds=3,
                                       train=TrainConfig(epochs=1, batch_size=16, max_steps=2, num_workers=0,
                                                         progress=False)))
    evaluate_checkpoint(str(run.model_path), workspace=ws, dataset_root=synth["au"])
    return ws, run


def test_export_round_trip_predicts_identically(trained, env, capsys, synth):
    from clefctl.predict import Predictor
    from clefctl.prompts import load_prompts

    ws, run = trained
    out = env / "exported"
    code, stdout, err = run_cli(["export", "--workspace", ws, "--out", str(out), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["run"] == run.name and summary["evaluation"] is not None
    assert set(summary["files"]) == {"open_clip_model.safetensors", "open_clip_config.json", "clefctl.json",
                                     "prompts.yaml", "README.md"}
    doc = json.loads((out / "clefctl.json").read_text())
    meta = Predictor.load(run.model_path).model.meta
    assert doc["task"] == "au" and doc["classes"] == meta["classes"] and doc["arch"] == "clef-tiny"
    assert doc["prompts_hash"] == meta["prompts_hash"] == load_prompts(out / "prompts.yaml").hash
    assert doc["init_fingerprint"] == run.config()["init_fingerprint"] and doc["dataset"] == "bp4d"
    assert "fold 1 of 3" in doc["protocol"] and set(doc["thresholds"]["per_class"]) == set(meta["classes"])
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: open_clip\n") and "facial-action-units" in card
    assert "datasets:\n- bp4d" in card and "metrics:\n- f1" in card
    assert "one checkpoint, split test" in card and "F1" in card  # the evaluate report's protocol and table

    images = [Image.open(p).convert("RGB") for p in sorted(Path(synth["au"]).rglob("*.jpg"))[:6]]
    original = Predictor.load(run.model_path)
    want = original.scores(images)
    from_folder = Predictor.load(out)
    assert from_folder.model.meta == original.model.meta and from_folder.classes == original.classes
    assert np.array_equal(from_folder.scores(images), want)
    lay_hub_cache(env / "hf", "my-lab/clef-au", {p.name: p for p in out.iterdir()})
    wsp = Workspace(ws)
    hub_choice = wsp.resolve_model("hf-hub:my-lab/clef-au", stages=("finetune",))
    assert np.array_equal(Predictor.load(hub_choice.weights).scores(images), want)
    # as fine-tuning initialisation: the same weights, whatever the default --arch
    init = wsp.resolve_model(str(out), arch="clef-tiny").load(default_arch="clef-tiny")
    ref_sd = original.model.clip.state_dict()
    assert all(torch.equal(v, ref_sd[k]) for k, v in init.clip.state_dict().items())
    # an existing folder is not overwritten without --force
    code, _, err = run_cli(["export", "--workspace", ws, "--out", str(out)], capsys)
    assert "not empty" in one_line_error(code, err)
    assert run_cli(["export", run.name, "--workspace", ws, "--out", str(out), "--force"], capsys)[0] == 0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".exported")]


def test_predict_cli_takes_an_exported_folder(trained, env, capsys, synth):
    ws, run = trained
    out = env / "exp"
    assert run_cli(["export", "--workspace", ws, "--out", str(out)], capsys)[0] == 0
    from skimage import data

    img = env / "astronaut.png"
    Image.fromarray(data.astronaut()).save(img)
    a, b = env / "a.csv", env / "b.csv"
    for ck, csv in ((str(run.model_path), a), (str(out), b)):
        code, _, err = run_cli(["predict", str(img), "--au-checkpoint", ck, "--out", str(csv), "--json",
                                "--workspace", str(env / "empty")], capsys)
        assert code == 0, err
    assert a.read_text() == b.read_text()
    import pandas as pd

    row = pd.read_csv(a).iloc[0]
    assert row.success == 1 and 0 <= row.AU12_p <= 1  # a face was scored, not two empty rows compared


def test_evaluate_takes_an_exported_folder(trained, env, capsys, synth):
    ws, run = trained
    out = env / "exp-eval"
    assert run_cli(["export", "--workspace", ws, "--out", str(out)], capsys)[0] == 0
    scores = []
    for ck in (str(run.model_path), str(out)):
        code, stdout, err = run_cli(["evaluate", "--checkpoint", ck, "--split", "all", "--dataset", "bp4d",
                                     "--dataset-root", synth["au"], "--workspace", ws, "--json"], capsys)
        assert code == 0, err
        scores.append(json.loads(stdout)["mean_f1"])
    assert scores[0] == scores[1]

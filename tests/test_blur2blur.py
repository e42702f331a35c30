"""Blur2Blur: its networks, the kernel extractor, the translator's GAN training on Ray Train."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from conftest import kill_after_checkpoint

from bluref_ray.config import ConfigError, load_config
from bluref_ray.data.images import to_float
from bluref_ray.models import build_model, load_checkpoint, read_checkpoint, save_checkpoint
from bluref_ray.models.blur2blur import apply_kernel
from bluref_ray.models.content import detail
from bluref_ray.training.loop import Worker

QUIET = ["ray.progress_bars=false", "ray.quiet=true"]


@pytest.mark.parametrize("disc", ["patchgan-plain-tiny", "patchgan-tiny"])
def test_translator_and_discriminator_shapes_at_every_scale_on_odd_sizes(disc):
    g, d = build_model("mimo-tiny"), build_model(disc)
    x = torch.rand(2, 3, 67, 45)
    outs = g(x, return_scales=True)
    assert [tuple(o.shape[-2:]) for o in outs] == [(17, 12), (34, 23), (67, 45)]
    assert torch.equal(g(x), outs[-1])
    assert torch.allclose(outs[-1], x)  # an untrained translator is the identity
    for o in outs:  # one discriminator judges every scale
        logits = d(detail(o))
        assert logits.shape == (2, 1, o.shape[-2] // 8, o.shape[-1] // 8)


def test_the_discriminator_judges_detail_not_colour():
    """What the discriminator sees by default: noise and edges stay, the scene's colour and
    its slow shading (which the content loss keeps) go."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    shading = torch.stack([0.2 + 0.3 * xx, 0.5 + 0.2 * yy, 0.7 - 0.2 * xx])[None]
    noise = 0.05 * torch.randn(1, 3, 64, 64)
    inner = (..., slice(8, -8), slice(8, -8))
    assert detail(shading)[inner].abs().max() < 1e-3
    kept = detail(shading + noise)[inner]
    assert 0.85 < float(kept.std() / noise[inner].std()) < 1.05


def test_kernel_extractor_overfits_one_pair():
    torch.manual_seed(0)
    sharp = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12), size=48, mode="bicubic")
    sharp = sharp.clamp(0, 1)
    streak = torch.zeros(1, 9, 9)
    streak[0, 4, :] = 1 / 9  # a horizontal streak of 9 pixels
    blurry = apply_kernel(sharp, streak)
    net = build_model("kernel-tiny", kernel_size=11)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def psnr(a):
        return -10 * torch.log10(((a - blurry) ** 2).mean()).item()

    for _ in range(200):
        loss = (net(sharp, blurry) - blurry).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        remade = net(sharp, blurry)
    assert psnr(remade) > max(38.0, psnr(sharp) + 12)
    assert net.kernel(net.encode(sharp, blurry)).shape == (1, 11, 11)


@pytest.mark.parametrize("kind", ["export", "torchscript"])
def test_a_network_of_ones_own_reads_as_a_checkpoint(tmp_path, kind):
    """A deblurrer trained elsewhere, saved by its own code (torch.export or TorchScript): read
    alone and after a translator (a chain, also saved in one file as `bluref blur2blur` writes
    it); a bare state dict is refused with the way to bring one's own."""
    from torch import nn

    from bluref_ray.models import CheckpointError, load_image_model

    torch.manual_seed(0)
    own = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 3, 3, padding=1)).eval()
    x = torch.rand(2, 3, 20, 28)
    path = str(tmp_path / "own.pt2")
    if kind == "export":
        free = torch.export.Dim.AUTO
        torch.export.save(torch.export.export(own, (x,), dynamic_shapes=(
            {0: free, 2: free, 3: free},)), path)
    else:
        torch.jit.save(torch.jit.trace(own, x), path)
    net, ckpt = load_image_model(path)
    assert ckpt["arch"] == "exported" and list(net.state_dict()) == ["program"]
    other = torch.rand(1, 3, 33, 17)
    with torch.no_grad():
        assert torch.allclose(net(x), own(x), atol=1e-6)
        assert torch.allclose(net.to("cpu")(other), own(other), atol=1e-6)
    a = build_model("mimo-tiny")
    save_checkpoint(a, str(tmp_path / "a.pt"), "mimo-unet", {"width": 16, "blocks": 2})
    chain, chained = load_image_model(f"{tmp_path}/a.pt+{path}")
    torch.save(chained, str(tmp_path / "chain.pt"))
    again, _ = load_image_model(str(tmp_path / "chain.pt"))
    with torch.no_grad():
        want = own(a.eval()(x).clamp(0, 1))
        assert torch.allclose(chain(x), want, atol=1e-6)
        assert torch.allclose(again(x), want, atol=1e-6)
    torch.save(own.state_dict(), str(tmp_path / "weights.pt"))
    with pytest.raises(CheckpointError, match="weights.pt: not a bluref-ray .*torch.export"):
        load_image_model(str(tmp_path / "weights.pt"))


def test_chained_checkpoints_run_one_network_after_the_other(tmp_path):
    a, b = build_model("mimo-tiny"), build_model("nafnet-tiny")
    with torch.no_grad():
        a.outs[-1].bias.fill_(0.1)  # the translator brightens
    save_checkpoint(a, str(tmp_path / "a.pt"), "mimo-unet", {"width": 16, "blocks": 2})
    save_checkpoint(b, str(tmp_path / "b.pt"), "nafnet-tiny", {})
    chain, ckpt = load_checkpoint(f"{tmp_path}/a.pt+{tmp_path}/b.pt")
    assert ckpt["arch"] == "chain" and len(chain.stages) == 2
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert torch.allclose(chain(x), b.eval()(a.eval()(x).clamp(0, 1)), atol=1e-6)
    with pytest.raises(Exception, match="missing.pt"):
        read_checkpoint(f"{tmp_path}/a.pt+{tmp_path}/missing.pt")
    from bluref_ray.models import CheckpointError, load_image_model

    save_checkpoint(build_model("refnafnet-tiny"), str(tmp_path / "ref.pt"), "refnafnet-tiny", {})
    with pytest.raises(CheckpointError, match="a chain with a Ref-NAFNet in it"):
        load_image_model(f"{tmp_path}/a.pt+{tmp_path}/ref.pt")


def _fixtures(tmp_path) -> tuple[str, str]:
    """An untrained kernel extractor and deblurrer, as checkpoints."""
    kernel, deblurrer = str(tmp_path / "kernel.pt"), str(tmp_path / "deblurrer.pt")
    save_checkpoint(build_model("kernel-tiny"), kernel, "kernel-wizard",
                    {"width": 16, "code": 64, "kernel_size": 25, "blocks": 1})
    save_checkpoint(build_model("nafnet-tiny"), deblurrer, "nafnet-tiny", {})
    return kernel, deblurrer


def test_translator_steps_with_the_network_blocked(tiny_frames, tiny_data, tmp_path,
                                                   monkeypatch):
    """A GAN step (known blur by kernel transfer, both updates, the content loss of the shipped
    matcher's features) and a validation, with torch.hub and every non-local socket refused:
    nothing is downloaded."""
    from bluref_ray.training.blur2blur import TranslatorTask

    def refuse(*_a, **_k):
        raise AssertionError("a download was attempted")

    for name in ("load", "load_state_dict_from_url", "download_url_to_file"):
        monkeypatch.setattr(torch.hub, name, refuse)
    connect = socket.socket.connect

    def local_only(sock, address):
        if sock.family != socket.AF_UNIX and address[0] not in ("127.0.0.1", "localhost", "::1"):
            refuse()
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    kernel, deblurrer = _fixtures(tmp_path)
    cfg = load_config(None, [f"blur2blur.known={tiny_data}/train", f"blur2blur.kernel={kernel}",
                             f"blur2blur.deblurrer={deblurrer}", f"blur2blur.val={tiny_data}/test",
                             "blur2blur.batch_size=2", "blur2blur.val_frames=2",
                             "blur2blur.content=matcher"]).blur2blur
    worker = Worker(0, 1, torch.device("cpu"), False, str(tmp_path), None)
    torch.manual_seed(0)
    task = TranslatorTask(cfg, worker, {"frames": tiny_frames})
    task.ddp = dict(task.nets)
    assert task.camera.blurry_clips and task.camera.sharp_clips
    assert not set(task.camera.blurry_clips) & set(task.camera.sharp_clips)
    before = {k: [p.clone() for p in n.parameters()] for k, n in task.nets.items()}
    batches = task.batches(0)
    for step in range(2):
        batch = next(batches)
        assert batch["blurry"].shape == batch["known"].shape == (2, 3, 64, 64)
        logs = task.step(batch, step)
    assert all(torch.isfinite(v) for v in logs.values()) and logs["gp"] >= 0
    for k, net in task.nets.items():  # both networks were updated
        assert any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters())), k
    scores, images = task.validate(2)
    # an untrained deblurrer scores anything; the translation stays near its input
    assert np.isfinite(scores["psnr"]) and np.isfinite(scores["psnr_direct"])
    assert scores["psnr_io"] > 25
    assert images["val/blurry|translated|deblurred|truth"].shape[0] == 3


def test_kernel_training_and_two_worker_gan_training_stay_in_sync(ray_cluster, tiny_frames,
                                                                  tiny_data, tmp_path):
    from bluref_ray.training.blur2blur import train_blur2blur
    from bluref_ray.training.kernel import train_kernel

    run = ["steps=3", "batch_size=4", "log_every=1", "val_every=3", "checkpoint_every=3",
           "cpus_per_worker=0.5", "use_gpu=false", "val_frames=2"]
    k = train_kernel(f"{tiny_data}/train", str(tmp_path / "kernel"),
                     load_config(None, [*QUIET, *(f"kernel.{s}" for s in run)]),
                     log=lambda _m: None)
    assert read_checkpoint(k["model"])["arch"] == "kernel-wizard"
    assert k["val"]["step"] == 3 and 10 < k["val"]["psnr_sharp"] < 60
    _, deblurrer = _fixtures(tmp_path)
    cfg = load_config(None, [*QUIET, *(f"blur2blur.{s}" for s in run), "blur2blur.workers=2",
                             f"blur2blur.known={tiny_data}/train",
                             f"blur2blur.kernel={k['model']}", f"blur2blur.deblurrer={deblurrer}",
                             f"blur2blur.val={tiny_data}/test"])
    r = train_blur2blur(tiny_frames, str(tmp_path / "b2b"), cfg, log=lambda _m: None)
    sums = json.loads((tmp_path / "b2b" / "final.json").read_text())["weight_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # translator and discriminator in sync
    state = torch.load(tmp_path / "b2b" / "ray-train" / "step_000003" / "state.pt",
                       weights_only=True)
    assert set(state["optimizers"]) == {"translator", "disc"} and "disc" in state["nets"]
    assert read_checkpoint(r["translator"])["arch"] == "mimo-unet"
    chain, _ = load_checkpoint(r["model"])  # translator → deblurrer, as bluref deblur takes it
    with torch.no_grad():
        assert chain(to_float(np.zeros((30, 41, 3), np.uint8), "cpu")).shape == (1, 3, 30, 41)
    assert r["val"]["step"] == 3 and "psnr_io" in r["val"]


@pytest.mark.faults
def test_killed_blur2blur_resumes_from_its_last_checkpoint(ray_cluster, tiny_frames, tiny_data,
                                                          tmp_path):
    """`bluref blur2blur` is SIGKILLed mid-way; the same training resumes from its checkpoint."""
    from bluref_ray.training.blur2blur import train_blur2blur
    from bluref_ray.training.common import latest_checkpoint

    kernel, _ = _fixtures(tmp_path)
    out = tmp_path / "killed"
    args = [tiny_frames, "--out", str(out), "--known", f"{tiny_data}/train", "--kernel", kernel,
            "--batch-size", "2", "--checkpoint-every", "2", "--log-every", "1",
            "--cpus-per-worker", "0.5", "--no-ray-progress-bars"]
    kill_after_checkpoint(["blur2blur", *args, "--steps", "400"], out)
    assert not (out / "translator.pt").exists()
    stopped = int(latest_checkpoint(str(out), None).rsplit("_", 1)[1])
    assert 4 <= stopped < 400
    settings = [f"known={tiny_data}/train", f"kernel={kernel}", "batch_size=2",
                "checkpoint_every=2", "log_every=1", "cpus_per_worker=0.5",
                f"steps={stopped + 2}"]
    logs: list[str] = []
    train_blur2blur(tiny_frames, str(out), load_config(None, [
        "ray.progress_bars=false", *(f"blur2blur.{s}" for s in settings)]), log=logs.append)
    assert any("resuming from" in m and f"step_{stopped:06d}" in m for m in logs), logs
    assert read_checkpoint(str(out / "translator.pt"))["step"] == stopped + 2
    # other weights of the losses would go on from these ones: refused, the setting named
    with pytest.raises(ConfigError, match=r"holds a blur2blur run with other settings or inputs "
                                          r"\(settings.adversarial: [0-9.]+ there, [0.]+ now\)"):
        train_blur2blur(tiny_frames, str(out), load_config(None, [
            "ray.progress_bars=false", *(f"blur2blur.{s}" for s in settings),
            "blur2blur.adversarial=0"]), log=logs.append)


def test_supervised_training_straight_from_a_paired_tree(ray_cluster, tiny_data, tmp_path):
    from bluref_ray.training.deblur import train_deblurrer

    cfg = load_config(None, [*QUIET, "train.supervised=true", "train.steps=2",
                             "train.batch_size=2", "train.crop=32", "train.cpus_per_worker=0.5"])
    s = train_deblurrer(f"{tiny_data}/train", str(tmp_path / "sup"), cfg, log=lambda _m: None)
    assert read_checkpoint(s.model)["step"] == 2 and s.pairs.endswith("/train")
    with pytest.raises(ConfigError, match="no pseudo-pair shards"):
        train_deblurrer(f"{tiny_data}/train", str(tmp_path / "unsup"),
                        load_config(None, [*QUIET, "train.steps=2"]), log=lambda _m: None)


def test_bad_blur2blur_settings_are_clear_errors(tiny_frames, tiny_data, tmp_path):
    from bluref_ray.data.domains import split_clips
    from bluref_ray.models.content import ContentLoss
    from bluref_ray.training.blur2blur import train_blur2blur

    with pytest.raises(ConfigError, match="blur2blur.known is required"):
        train_blur2blur(tiny_frames, str(tmp_path / "x"), load_config(None, QUIET))
    with pytest.raises(ConfigError, match="blur2blur.kernel=.*nope.pt: no such checkpoint"):
        train_blur2blur(tiny_frames, str(tmp_path / "x"), load_config(None, [
            *QUIET, f"blur2blur.known={tiny_data}/train", f"blur2blur.kernel={tmp_path}/nope.pt"]))
    (tmp_path / "k.pt").write_bytes(b"x")  # only its existence is checked before training
    with pytest.raises(ConfigError, match=r"deblurrer=.*gone\.pt: not found \(a part of"):
        train_blur2blur(tiny_frames, str(tmp_path / "x"), load_config(None, [
            *QUIET, f"blur2blur.known={tiny_data}/train", f"blur2blur.kernel={tmp_path}/k.pt",
            f"blur2blur.deblurrer={tmp_path}/k.pt+{tmp_path}/gone.pt"]))
    known = [*QUIET, f"blur2blur.known={tiny_data}/train"]
    with pytest.raises(ConfigError, match=r"blur2blur.kernel: .*k\.pt: not a PyTorch checkpoint"):
        train_blur2blur(tiny_frames, str(tmp_path / "x"), load_config(None, [
            *known, f"blur2blur.kernel={tmp_path}/k.pt"]))
    save_checkpoint(build_model("nafnet-tiny"), str(tmp_path / "naf.pt"), "nafnet-tiny", {})
    save_checkpoint(build_model("kernel-tiny"), str(tmp_path / "kw.pt"), "kernel-tiny", {})
    with pytest.raises(ConfigError, match="a 'nafnet-tiny' checkpoint, not a blur-kernel"):
        train_blur2blur(tiny_frames, str(tmp_path / "x"), load_config(None, [
            *known, f"blur2blur.kernel={tmp_path}/naf.pt"]))
    with pytest.raises(ConfigError, match=r"crop=48: patchgan-tiny judges the coarsest scale too "
                                          r"\(12 px\) and needs 16 px there; use a crop of at "
                                          r"least 64"):
        train_blur2blur(tiny_frames, str(tmp_path / "x"), load_config(None, [
            *known, f"blur2blur.kernel={tmp_path}/kw.pt", "blur2blur.crop=48",
            "blur2blur.discriminator=patchgan-tiny"]))
    with pytest.raises(ConfigError, match="at least 2 clips"):
        split_clips(["only"], 0.6, 0)
    blurry, sharp = split_clips([f"c{i}" for i in range(10)], 0.6, 0)
    assert len(blurry) == 6 and len(sharp) == 4 and not set(blurry) & set(sharp)
    with pytest.raises(ConfigError, match="vgg19_weights"):
        ContentLoss("vgg19")
    with pytest.raises(ConfigError, match="scene_split"):
        load_config(None, ["blur2blur.scene_split=1.0"])

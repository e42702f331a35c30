"""bluref synth and bluref ingest on s3:// through a real SeaweedFS server."""

from __future__ import annotations

import dataclasses

import pyarrow.compute as pc
from conftest import TINY

from bluref_ray import schema, storage
from bluref_ray.cli import main
from bluref_ray.config import Config, IngestConfig, RayConfig
from bluref_ray.data.synth import synthesize
from bluref_ray.pipeline.ingest import run_ingest


def _comparable(table, root):
    """The frames table with URIs made relative to the dataset root."""
    t = schema.sort_frames(table)
    for col in ("source_uri", "gt_uri"):
        rel = [None if u is None else storage.relative(u, root) for u in t[col].to_pylist()]
        t = t.set_column(t.schema.get_field_index(col), col, [rel])
    return t


def test_synth_and_ingest_on_s3_give_the_same_frames_table(ray_cluster, s3_cfg, s3_bucket,
                                                           tiny_data, tmp_path):
    data = f"{s3_bucket}/data"
    synthesize(data, TINY, s3_cfg, log=lambda _m: None)
    assert storage.read_bytes(f"{data}/manifest.json", s3_cfg) == open(
        f"{tiny_data}/manifest.json", "rb").read()
    cfg = Config(storage=s3_cfg, ray=RayConfig(progress_bars=False),
                 ingest=IngestConfig(max_refs=3, delta=4))
    sources = ["videos", "train", "test"]
    run_ingest([f"{data}/{s}" for s in sources], f"{s3_bucket}/ingest", cfg, log=lambda _m: None)
    local_cfg = dataclasses.replace(cfg, storage=storage.StorageConfig())
    run_ingest([f"{tiny_data}/{s}" for s in sources], str(tmp_path / "ingest"), local_cfg,
               log=lambda _m: None)
    on_s3 = schema.read_table(f"{s3_bucket}/ingest/frames", schema.FRAMES, s3_cfg)
    local = schema.read_table(str(tmp_path / "ingest/frames"), schema.FRAMES)
    assert on_s3.num_rows == local.num_rows > 0
    assert pc.all(pc.starts_with(on_s3["source_uri"], "s3://")).as_py()
    assert _comparable(on_s3, data).equals(_comparable(local, tiny_data))
    summary = storage.read_text(f"{s3_bucket}/ingest/summary.json", s3_cfg)
    assert '"rejects": 0' in summary


def test_cli_on_s3_and_unreachable_endpoint(ray_cluster, s3_server, s3_bucket, capsys,
                                            monkeypatch):
    from s3server import free_port

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    out = f"{s3_bucket}/synth"
    assert main(["synth", "--out", out, "--train-clips", "1", "--test-clips", "0",
                 "--frames", "8", "--height", "48", "--width", "64", "--quiet"]) == 0
    assert main(["ingest", f"{out}/videos", "--out", f"{s3_bucket}/frames", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "ingested 1 clips: 8 frames" in printed and f"{s3_bucket}/frames/frames" in printed
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    code = main(["ingest", f"{out}/videos", "--out", f"{s3_bucket}/x", "--max-attempts", "1",
                 "--connect-timeout-s", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot reach the S3 endpoint http://127.0.0.1:" in err and f"{s3_bucket}/x" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_train_and_deblur_on_s3(ray_cluster, s3_cfg, s3_bucket, tiny_pairs, tiny_data):
    """Training writes its checkpoints, model and logs to S3; deblur reads and writes S3."""
    from bluref_ray.config import TrainConfig
    from bluref_ray.models import read_checkpoint
    from bluref_ray.pipeline.deblur import run_deblur
    from bluref_ray.training.deblur import train_deblurrer

    cfg = Config(ray=RayConfig(progress_bars=False), storage=s3_cfg,
                 train=TrainConfig(steps=2, batch_size=2, crop=32, crops_per_frame=2,
                                   cpus_per_worker=0.5, checkpoint_every=1))
    s = train_deblurrer(tiny_pairs, f"{s3_bucket}/train", cfg, log=lambda _m: None)
    assert s.model == f"{s3_bucket}/train/model.pt"
    assert read_checkpoint(s.model, s3_cfg)["step"] == 2
    files = storage.list_files(f"{s3_bucket}/train", s3_cfg)
    assert any("/ray-train/step_000001/state.pt" in f for f in files)
    assert any("/tensorboard/" in f for f in files)
    blur = sorted(storage.list_files(f"{tiny_data}/test"))[0]
    storage.write_bytes(f"{s3_bucket}/in/a.png", storage.read_bytes(blur), s3_cfg)
    d = run_deblur(s.model, [f"{s3_bucket}/in"], f"{s3_bucket}/out", cfg,
                   log=lambda _m: None)
    assert d["done"] == 1 and not d["failed"]
    assert storage.exists(f"{s3_bucket}/out/a.png", s3_cfg)

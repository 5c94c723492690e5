"""Shards from anywhere: http(s) URLs and pipe: commands (webdataset's gopen) read exactly as local files.

No internet: a loopback HTTP server started here (http.server in a thread) serves the shards; http URLs
are opened with curl (webdataset's opener for http), pipe: lists with `cat`.
"""
from __future__ import annotations

import collections
import functools
import http.server
import itertools
import json
import threading

import pytest
import torch

from disse.schemas import SchemaError
from disse.trainer.data.loader import DataConfig, StreamPosition, eval_loader, resolve_shards, train_loader
from shardgen import write_shards


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; paths in ``server.broken`` get their full Content-Length but only half their bytes
    before the connection is closed (``server.break_times`` times, then served whole)."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests[self.path] += 1
        if self.path in srv.broken and srv.requests[self.path] <= srv.break_times:
            data = (srv.root / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_shards(root, "train", [5, 7, 3, 4])
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    srv.root, srv.broken, srv.break_times, srv.requests = root, set(), 0, collections.Counter()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # curl honours proxy variables: the loopback server must be reached directly
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"] and x["_position"] == y["_position"]
        assert torch.equal(x["waveform"], y["waveform"]) and torch.equal(x["iv"], y["iv"])
        assert torch.equal(x["targets"]["direction"], y["targets"]["direction"])


def lists(root, url):
    """The same four shards as a local folder, an http brace pattern and a pipe:cat brace pattern."""
    return {"local": resolve_shards(str(root / "train")),
            "http": resolve_shards(f"{url}/train/train-{{000000..000003}}.tar"),
            "pipe": resolve_shards(f"pipe:cat {root}/train/train-{{000000..000003}}.tar")}


def test_http_and_pipe_give_the_batches_of_local_reads_and_resume_exactly(served):
    srv, root, url = served
    shard_lists = lists(root, url)
    assert [s.sizes for s in shard_lists.values()] == [[5, 7, 3, 4]] * 3
    cfg = DataConfig(batch_size=2, num_workers=2, shuffle_buffer=4, seed=3)
    ref = take(train_loader(shard_lists["local"], cfg), 14)  # more than one pass (19 samples)
    for name in ("http", "pipe"):
        same_batches(ref, take(train_loader(shard_lists[name], cfg), 14))
    # mid-epoch resume over http: the position after 5 batches, as a checkpoint stores it
    pos = StreamPosition(num_workers=2)
    for b in ref[:5]:
        slot, pass_, index = b["_position"]
        pos.positions[slot] = (pass_, index)
        pos.batches += 1
    pos = StreamPosition.from_dict(json.loads(json.dumps(pos.to_dict())))
    same_batches(ref[5:], take(train_loader(shard_lists["http"], cfg, start=pos), 9))
    # the evaluation stream: every sample once, identical
    evals = {name: [b for b in eval_loader(s, batch_size=3, num_workers=2)] for name, s in shard_lists.items()}
    for name in ("http", "pipe"):
        assert [b["key"] for b in evals[name]] == [b["key"] for b in evals["local"]]
        assert all(torch.equal(a["waveform"], b["waveform"]) for a, b in zip(evals[name], evals["local"]))


def test_a_connection_dropped_half_way_is_retried_then_skipped_and_counted(served):
    srv, root, url = served
    shard_lists = lists(root, url)
    broken = "/train/train-000001.tar"  # 7 samples
    cfg = DataConfig(batch_size=1, num_workers=0, shuffle_buffer=1, seed=0, shard_retries=2)
    ref = take(train_loader(shard_lists["local"], cfg), 19)
    try:
        # broken once: the retry reads on from where the stream broke; same samples, same order
        srv.broken, srv.break_times = {broken}, 1
        srv.requests.clear()
        same_batches(ref, take(train_loader(shard_lists["http"], cfg), 19))
        assert srv.requests[broken] == 2
        # broken for good: opened 1 + shard_retries times, then skipped and counted; the pass goes on
        srv.break_times = 10**6
        srv.requests.clear()
        got = take(train_loader(shard_lists["http"], cfg), 19)
        assert srv.requests[broken] == 3
        first_pass = [k for b in got if b["_position"][1] == 0 for k in b["key"]]
        local_first = [k for b in ref if b["_position"][1] == 0 for k in b["key"]]
        assert set(local_first) - set(first_pass) <= {f"train_{i:06d}" for i in range(5, 12)}
        assert len(first_pass) >= 19 - 7  # the other shards whole (plus what arrived before the break)
        assert got[-1]["_errors"][1]["bad_shards"] >= 1
        # evaluation finishes too, with the shard counted
        srv.requests.clear()
        loader = eval_loader(shard_lists["http"], batch_size=4, retries=0)
        keys = [k for b in loader for k in b["key"]]
        assert srv.requests[broken] == 1 and loader.dataset.errors.counts["bad_shards"] == 1
        assert set(keys) >= {f"train_{i:06d}" for i in [*range(5), *range(12, 19)]}
    finally:
        srv.broken, srv.break_times = set(), 0


def test_bad_remote_lists_are_one_clear_error_naming_the_url(served, tmp_path):
    srv, root, url = served
    cases = {
        f"{url}/nowhere/train-{{000000..000001}}.tar": f"{url}/nowhere/sizes.json",  # nothing there (404)
        "http://127.0.0.1:9/train/train-000000.tar": "http://127.0.0.1:9/train/sizes.json",  # unreachable
        f"pipe:cat {tmp_path}/train-{{000000..000001}}.tar": f"pipe:cat {tmp_path}/sizes.json",  # failing pipe
        f"{url}/train/train-000009.tar": f"{url}/train/sizes.json",  # a shard sizes.json does not list
        "nosuch://bucket/train-000000.tar": "nosuch://bucket/train-000000.tar",  # no opener for the scheme
        f"{url}/train/": f"{url}/train/",  # names no .tar file
    }
    for spec, named in cases.items():
        with pytest.raises(SchemaError) as err:
            resolve_shards(spec)
        assert named in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_disse_train_names_an_unreachable_url(tmp_path, capsys):
    from disse.trainer.cli.train import main

    with pytest.raises(SystemExit) as exit_:
        main(["--config", "demo", "data.train=http://127.0.0.1:9/train/train-{000000..000003}.tar",
              f"train.out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "http://127.0.0.1:9/train/sizes.json" in err and "could not connect" in err


def _brace(folder):
    """``folder``'s shards as one brace pattern of their file names (``train-{000000..000003}.tar``)."""
    names = sorted(p.name for p in folder.glob("*.tar"))
    prefix, first, last = names[0].rsplit("-", 1)[0], names[0].rsplit("-", 1)[1][:-4], names[-1].rsplit("-", 1)[1][:-4]
    assert len(names) == int(last) - int(first) + 1
    return f"{prefix}-{{{first}..{last}}}.tar"


@pytest.mark.slow
def test_training_and_evaluation_over_http_and_pipe_match_local(demo_shards, tmp_path):
    """disse-train over http, stopped mid-epoch and resumed over pipe:cat, ends with the weights of a local run
    straight through; disse-eval scores an http list exactly as the local folder (validation during training
    goes through the same eval_loader, tested above)."""
    from click.testing import CliRunner

    from disse.trainer.cli.eval import main as eval_main
    from disse.trainer.training.checkpoint import load_checkpoint
    from disse.trainer.training.logging_utils import read_log
    from disse.trainer.training.loop import train
    from test_train import cfg_for

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(demo_shards)))
    srv.root, srv.broken, srv.break_times, srv.requests = demo_shards, set(), 0, collections.Counter()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        train_http = f"{url}/train/{_brace(demo_shards / 'train')}"
        train_pipe = f"pipe:cat {demo_shards}/train/{_brace(demo_shards / 'train')}"
        common = ["train.max_steps=3", "data.batch_size=2", "train.accum_steps=2", "data.num_workers=1",
                  "eval.each_epoch=false", "eval.at_start=false", "data.val=", "log.every_steps=1"]
        train(cfg_for(demo_shards, tmp_path / "a", *common))
        assert train(cfg_for(demo_shards, tmp_path / "b", *common, f"data.train={train_http}",
                             "train.stop_after=2")).step == 2
        assert train(cfg_for(demo_shards, tmp_path / "b", *common, f"data.train={train_pipe}"),
                     resume="latest").step == 3
        a = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")["model"]
        b = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["model"]
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
        losses = [[r["loss"] for r in read_log(tmp_path / x / "log.jsonl") if r["event"] == "train"] for x in "ab"]
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        # disse-eval reads the same lists: the http list scores exactly as the local folder
        docs = []
        for shards, out in ((demo_shards / "test", "local"), (f"{url}/test/{_brace(demo_shards / 'test')}", "http")):
            res = CliRunner().invoke(eval_main, ["--checkpoint", tmp_path / "a" / "checkpoints" / "latest.pt",
                                                 "--shards", shards, "--out", tmp_path / out, "--no-plots",
                                                 "--device", "cpu", "--shard-retries", "1"])
            assert res.exit_code == 0, res.output
            docs.append(json.loads((tmp_path / out / "metrics.json").read_text())["metrics"])
        assert docs[0]["n_items"] == 16 and docs[0] == docs[1]
    finally:
        srv.shutdown()
        srv.server_close()

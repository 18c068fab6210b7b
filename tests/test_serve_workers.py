"""``serve --workers N``: every uvicorn worker builds its app with
:func:`marl_two_tower.serving.commands.app_from_env` from the settings ``serve`` puts in
the environment; that app must answer exactly as the single-process one."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from marl_two_tower.config import load_config
from marl_two_tower.data import load_split
from marl_two_tower.serving import commands
from marl_two_tower.serving.export import export_bundle, load_bundle
from marl_two_tower.serving.recommender import Recommender
from marl_two_tower.serving.service import create_app
from marl_two_tower.train.trainer import Trainer

TINY = ["data.synthetic.n_users=120", "data.synthetic.n_items=80", "model.dim=8", "model.id_dim=8",
        "model.hidden=8", "train.batch_size=128", "train.epochs=1", "train.tensorboard=false"]


def test_worker_app_answers_like_the_single_process_app(tmp_path, monkeypatch):
    cfg = load_config(None, TINY + [f"checkpoint_dir={tmp_path / 'ck'}"])
    split = load_split(cfg.data)
    tr = Trainer(cfg, split, progress=False)
    tr.fit()
    bundle = export_bundle(tr.model.eval(), cfg, split, tmp_path / "bundle")
    monkeypatch.setenv(commands.WORKER_ENV, json.dumps(
        {"bundle": str(bundle), "checkpoint": None, "overrides": ["serving.max_k=50"], "threads": 1,
         "name": "tiny"}))
    worker = TestClient(commands.app_from_env())
    single = TestClient(create_app(Recommender(load_bundle(bundle))))
    assert worker.get("/health").json()["bundle"]["name"] == "tiny"
    users = load_bundle(bundle).user_ids[:25].tolist()
    for u in users:
        a = worker.get("/recommend", params={"user_id": u, "k": 10}).json()
        b = single.get("/recommend", params={"user_id": u, "k": 10}).json()
        assert a["items"] == b["items"] and len(a["items"]) == 10
    # the override reached the worker: k above its max_k is refused there only
    assert worker.get("/recommend", params={"user_id": users[0], "k": 60}).status_code != 200
    assert single.get("/recommend", params={"user_id": users[0], "k": 60}).status_code == 200


def test_workers_flag_is_checked_first(tmp_path, capsys):
    from marl_two_tower.cli.main import main

    assert main(["serve", "--bundle", str(tmp_path / "nope"), "--workers", "0"]) == 2
    assert "--workers: expected a value >= 1, got 0" in capsys.readouterr().err


def test_worker_connections_get_tcp_nodelay(monkeypatch):
    """uvicorn's worker sockets have protocol number 0, so asyncio leaves Nagle on; the
    workers' protocol sets TCP_NODELAY itself (else 40 ms per keep-alive request)."""
    import socket

    from uvicorn.protocols.http.h11_impl import H11Protocol

    from marl_two_tower.serving.service import NoDelayH11Protocol

    monkeypatch.setattr(H11Protocol, "connection_made", lambda self, transport: None)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:  # proto 0, as uvicorn binds
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()) as client:
            conn, _ = server.accept()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0

                class Transport:
                    def get_extra_info(self, key):
                        return conn if key == "socket" else None

                NoDelayH11Protocol.connection_made(object.__new__(NoDelayH11Protocol), Transport())
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                assert client.fileno() >= 0

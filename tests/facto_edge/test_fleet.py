"""The fleet on Flower: 4 clients of the digits for 2 rounds, through the in-process Grid
(the same ClientApp and ServerApp as under Ray) and once through Flower's Ray simulation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from facto_edge.errors import CheckpointError, FactoEdgeError  # noqa: E402
from facto_edge.fleet.client import client_app  # noqa: E402
from facto_edge.fleet.config import FleetConfig  # noqa: E402
from facto_edge.fleet.partition import partition_indices  # noqa: E402
from facto_edge.fleet.parts import read_part, write_parts  # noqa: E402
from facto_edge.fleet.server import FleetCallback  # noqa: E402
from facto_edge.fleet.simulate import simulate  # noqa: E402
from facto_edge.fleet.state import load_state  # noqa: E402
from facto_edge.fleet.tensors import check_update  # noqa: E402
from facto_edge.fleet.wire import encode  # noqa: E402
from facto_edge.runtime.manifest import Manifest  # noqa: E402


@pytest.fixture(scope="module")
def fleet_model(pretrained_pt, tmp_path_factory):
    """The digits model as the fleet tests were written for (last factors, BN folded,
    trained with q4): with `--bn train` the BN statistics travel beside the trainable
    tensors."""
    from facto_edge import export

    out = tmp_path_factory.mktemp("fleet_model") / "model.facto"
    export(pretrained_pt, out, rank=0.25, train="last", bn="fold", ort=False)
    return out


@pytest.fixture(scope="module")
def cfg(fleet_model) -> FleetConfig:
    return FleetConfig(
        str(fleet_model), "digits:", clients=4, rounds=2, fraction=1.0, local_epochs=2,
        batch_size=16, lr=0.05, codec="q4",
    )  # fmt: skip


def wrapped(cfg: FleetConfig, train) -> ClientApp:
    """A ClientApp whose train handler is `train(inner_app, message, context)`."""
    inner = client_app(cfg)
    app = ClientApp()

    @app.train()
    def _train(message: Message, context: Context) -> Message:
        return train(inner, message, context)

    @app.query()
    def _query(message: Message, context: Context) -> Message:
        return inner(message, context)

    return app


@pytest.fixture(scope="module")
def straight(cfg, tmp_path_factory):
    """An uninterrupted in-process run, and the ArrayRecords each client saw and sent."""
    seen: list[tuple[str, int, ArrayRecord]] = []

    def spy(inner, message, context):
        seen.append(("to", context.node_config["partition-id"], message.content["arrays"]))
        reply = inner(message, context)
        seen.append(("from", context.node_config["partition-id"], reply.content["arrays"]))
        return reply

    out = tmp_path_factory.mktemp("fleet") / "run"
    report = simulate(cfg, out, backend="inprocess", client_app=wrapped(cfg, spy))
    return report, seen, out


def test_global_accuracy_rises(straight):
    report, _, out = straight
    accuracy = [r["accuracy"] for r in report.rounds]
    assert [r["round"] for r in report.rounds] == [0, 1, 2]
    assert accuracy[0] < 0.15  # the zeroed head: chance
    assert accuracy[2] > accuracy[0] + 0.1
    assert all(r["sampled"] == r["finished"] == 4 for r in report.rounds[1:])
    saved = json.loads((out / "fleet.json").read_text())
    assert saved["rounds"][-1]["accuracy"] == accuracy[-1]
    assert (out / "fleet.png").stat().st_size > 0


def test_only_the_trainable_tensors_travel(straight, cfg):
    report, seen, _ = straight
    manifest = Manifest.load(cfg.model)
    trainable = sorted(manifest.trainable)
    assert len(seen) == 2 * 2 * 4  # 2 rounds, 4 clients, to and from
    shapes = {k: v.numpy().shape for k, v in seen[0][2].items()}
    payload = sum(v.numpy().nbytes for v in seen[0][2].values())  # at the wire's precision
    for _, _, record in seen:
        assert sorted(record.keys()) == trainable
        assert record.count_bytes() == report.trainable_bytes
    # npy headers and key names are all that comes on top of the payload
    assert payload < report.trainable_bytes < payload + 160 * len(trainable)
    for r in report.rounds[1:]:
        assert r["bytes_to_client"] == report.trainable_bytes
        assert r["bytes_from_client"] == {str(p): report.trainable_bytes for p in range(4)}
    frozen = {n for layer in manifest.layers for n in layer.factors.values()} - set(trainable)
    assert frozen and not frozen & set(shapes)
    assert report.trainable_bytes < report.full_model_bytes["factorized"]
    assert report.share("dense") < 0.10


def test_failing_and_nan_clients_are_rejected_and_counted(cfg, tmp_path):
    good: dict[str, np.ndarray] = {}

    def faulty(inner, message, context):
        p = context.node_config["partition-id"]
        if p == 1:
            raise RuntimeError("the device lost power")
        reply = inner(message, context)
        arrays = {k: v.numpy() for k, v in reply.content["arrays"].items()}
        if p == 2:
            arrays = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
        elif p == 3:
            arrays.popitem()
        else:
            good.update(arrays)
        records = {"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                   "metrics": reply.content["metrics"]}  # fmt: skip
        return Message(RecordDict(records), reply_to=message)

    warnings: list[str] = []

    class Warnings(FleetCallback):
        def on_warning(self, message: str) -> None:
            warnings.append(message)

    # FedAvg over fp32 updates: an update is the client's tensors, bit for bit
    one = dataclasses.replace(cfg, rounds=1, wire="fp32", strategy="fedavg")
    report = simulate(one, tmp_path, backend="inprocess", client_app=wrapped(one, faulty),
                      callbacks=[Warnings()], plot=False)  # fmt: skip
    r = report.final
    assert (r["sampled"], r["finished"], r["failed"], r["rejected"]) == (4, 1, 1, 2)
    assert "lost power" in r["failures"]["1"]
    assert "NaN" in r["rejections"]["2"] and "missing" in r["rejections"]["3"]
    assert len(warnings) == 3
    state = load_state(tmp_path)
    # FedAvg over the one accepted update is that update, and nothing else got in
    assert state.tensors.keys() == good.keys()
    for name, a in good.items():
        np.testing.assert_array_equal(state.tensors[name], a)
    assert r["accuracy"] > report.rounds[0]["accuracy"]


@pytest.mark.parametrize(
    "server",
    [{"strategy": "fedadam", "server_lr": 0.01},
     {"strategy": "fedavgm", "server_lr": 1.0, "server_momentum": 0.9, "lr_decay": 0.5}],
)  # fmt: skip
def test_interrupted_run_resumes_to_the_same_global_weights(cfg, tmp_path, server):
    """FedAdam's moments and FedAvgM's momentum go through the checkpoint."""
    adam = dataclasses.replace(cfg, **server)
    whole = simulate(adam, tmp_path / "whole", backend="inprocess", plot=False)

    class PowerCut(FleetCallback):
        def on_round_end(self, record: dict) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(adam, tmp_path / "cut", backend="inprocess", callbacks=[PowerCut()])
    assert load_state(tmp_path / "cut").round == 1
    resumed = simulate(adam, tmp_path / "cut", backend="inprocess", plot=False)
    a, b = load_state(tmp_path / "whole"), load_state(tmp_path / "cut")
    assert b.round == 2 and b.strategy.keys() == a.strategy.keys() != set()
    for name in a.tensors:
        np.testing.assert_array_equal(a.tensors[name], b.tensors[name])
    assert resumed.final["accuracy"] == whole.final["accuracy"]
    with pytest.raises(CheckpointError, match="other options"):
        simulate(dataclasses.replace(adam, lr=0.1), tmp_path / "cut", backend="inprocess")


def test_ray_simulation_matches_the_in_process_run(straight, cfg, tmp_path):
    """Flower's Simulation Engine (Ray actors) runs the same apps to the same weights."""
    pytest.importorskip("ray")
    report = simulate(cfg, tmp_path, backend="ray", cpus=2, plot=False)
    expected = load_state(straight[2])
    got = load_state(tmp_path)
    assert [r["finished"] for r in report.rounds[1:]] == [4, 4]
    for name in expected.tensors:
        np.testing.assert_array_equal(got.tensors[name], expected.tensors[name])
    assert report.client_peak_rss > 0


def test_check_update_names_each_fault():
    want = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}

    def record(**arrays):
        return ArrayRecord({k: Array(v) for k, v in arrays.items()})

    ok = record(a=np.ones((2, 3), np.float32), b=np.ones(3, np.float32))
    assert check_update(ok, want) is None
    assert "missing ['b']" in check_update(record(a=want["a"]), want)
    extra = record(**want, c=np.zeros(1, np.float32))
    assert "unexpected ['c']" in check_update(extra, want)
    shape = record(a=np.zeros((3, 2), np.float32), b=want["b"])
    assert "expected float32[2, 3]" in check_update(shape, want)
    dtype = record(a=want["a"], b=np.zeros(3, np.float64))
    assert "float64" in check_update(dtype, want)
    inf = record(a=want["a"], b=np.array([0, np.inf, 0], np.float32))
    assert "NaN or Inf" in check_update(inf, want)


def test_dirichlet_partition_is_non_iid_complete_and_deterministic():
    labels = np.repeat(np.arange(10), 50)
    parts = partition_indices(labels, 20, "dirichlet:0.5", seed=0)
    assert all(len(p) >= 1 for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(500))
    again = partition_indices(labels, 20, "dirichlet:0.5", seed=0)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))
    classes = [len(np.unique(labels[p])) for p in parts]
    iid = partition_indices(labels, 20, "iid", seed=0)
    assert np.mean(classes) < np.mean([len(np.unique(labels[p])) for p in iid]) - 2
    with pytest.raises(FactoEdgeError, match="dirichlet:ALPHA"):
        partition_indices(labels, 20, "dirichlet:-1", seed=0)


def test_config_travels_as_a_run_config(cfg):
    assert FleetConfig.from_run_config(cfg.to_run_config()) == cfg
    with pytest.raises(FactoEdgeError, match="no 'model'"):
        FleetConfig.from_run_config({"data": "digits:"})
    with pytest.raises(FactoEdgeError, match="--fraction"):
        dataclasses.replace(cfg, fraction=1.5).check()
    with pytest.raises(FactoEdgeError, match=r"--wire must be one of \('fp32', 'fp16', 'q8'\)"):
        dataclasses.replace(cfg, wire="q4").check()
    # server lr 0: the strategy's own default
    assert (cfg.strategy, cfg.server_step) == ("fedavgm", 1.0)
    assert dataclasses.replace(cfg, strategy="fedadam").server_step == 0.1
    assert dataclasses.replace(cfg, strategy="fedadam", server_lr=0.01).server_step == 0.01


def test_cli_simulate_writes_fleet_json(cfg, tmp_path):
    from click.testing import CliRunner

    from facto_edge.cli import main

    args = ["fleet", "simulate", cfg.model, "--data", "digits:", "--clients", "3", "--rounds",
            "1", "--fraction", "1", "--local-epochs", "1", "--backend", "inprocess",
            "-o", str(tmp_path)]  # fmt: skip
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    assert "of the dense model" in run.output
    saved = json.loads((tmp_path / "fleet.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [0, 1]
    assert saved["full_model_bytes"]["dense"] > saved["trainable_bytes"]
    bad = CliRunner().invoke(main, [*args[:-2], "--partition", "zipf", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--partition must be" in bad.output


def test_metric_record_of_a_reply_is_checked(cfg, tmp_path):
    """A reply whose metrics lie about its sample count is rejected, not weighted."""

    def liar(inner, message, context):
        reply = inner(message, context)
        metrics = dict(reply.content["metrics"]) | {"num-examples": 0}
        records = {"arrays": reply.content["arrays"], "metrics": MetricRecord(metrics)}
        return Message(RecordDict(records), reply_to=message)

    one = dataclasses.replace(cfg, rounds=1, clients=2)
    report = simulate(one, tmp_path, backend="inprocess", client_app=wrapped(one, liar),
                      plot=False)  # fmt: skip
    assert report.final["rejected"] == 2 and report.final["finished"] == 0
    assert "num-examples" in report.final["rejections"]["0"]
    assert report.final["accuracy"] == report.rounds[0]["accuracy"]


def test_the_cli_and_the_runtime_load_without_flwr():
    import subprocess
    import sys

    code = ("import sys, facto_edge.cli, facto_edge.runtime, facto_edge.fleet.config; "
            "print(sorted(m for m in ('flwr', 'ray') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_client_trains_from_its_part_without_the_data_source(cfg, tmp_path):
    """The server side writes each client's part; a client process reading it imports
    neither scikit-learn nor the data openers, and trains to the same update."""
    import subprocess
    import sys

    from facto_edge.fleet.client import local_train
    from facto_edge.fleet.server import Evaluator

    write_parts(cfg, tmp_path)
    own = read_part(tmp_path, 2)
    ref = client_data_arrays(cfg, 2)
    np.testing.assert_array_equal(own.get(np.arange(len(own)))[0], ref[0])
    np.testing.assert_array_equal(own.labels, ref[1])
    start = Evaluator(cfg).initial()
    np.savez(tmp_path / "global.npz", **start)
    expected, _ = local_train(cfg, 2, start, server_round=1)
    code = (
        "import sys, numpy as np, dataclasses\n"
        "from facto_edge.fleet.config import FleetConfig\n"
        "from facto_edge.fleet.client import local_train\n"
        f"cfg = FleetConfig(**{dataclasses.asdict(cfg)!r})\n"
        f"cfg = dataclasses.replace(cfg, parts={str(tmp_path)!r})\n"
        f"g = dict(np.load({str(tmp_path / 'global.npz')!r}))\n"
        "out, m = local_train(cfg, 2, g, server_round=1)\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, **out)\n"
        "print(sorted(k for k in ('sklearn', 'ray') if k in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
    got = dict(np.load(tmp_path / "out.npz"))
    assert got.keys() == expected.keys()
    for name, a in expected.items():
        np.testing.assert_array_equal(got[name], a)


def client_data_arrays(cfg, partition):
    from facto_edge.fleet.data import client_data

    view = client_data(cfg, partition)
    return view.get(np.arange(len(view)))


def test_the_deployment_app_is_a_valid_flower_app(cfg, tmp_path):
    """`fleet server`'s Flower App passes Flower's own validation (its components import),
    and its run config is the FleetConfig; a SuperNode's node config parses as Flower
    parses it."""
    from flwr.cli.config_utils import load_and_validate
    from flwr.common.config import flatten_dict, parse_config_args

    from facto_edge.fleet.deploy import node_config, write_app

    tuned = dataclasses.replace(cfg, strategy="fedavgm", server_momentum=0.9, lr_decay=0.95)
    app = write_app(tuned, tmp_path)
    config, _ = load_and_validate(app / "pyproject.toml", check_module=True)
    run_config = flatten_dict(config["tool"]["flwr"]["app"]["config"])
    assert run_config["run-dir"] == str(tmp_path)
    assert FleetConfig.from_run_config(run_config) == tuned
    parsed = parse_config_args([node_config(3, 4, str(tmp_path))])
    assert parsed == {"partition-id": 3, "num-partitions": 4, "parts": str(tmp_path)}


@pytest.mark.parametrize("wire", ["fp16", "q8"])
def test_a_lossy_wire_cuts_the_bytes_and_the_fleet_still_learns(cfg, tmp_path, wire):
    """fp16 halves each tensor's payload (npy headers and names stay), q8 quarters it (plus
    a 4-byte scale, no header); both ways, every round. The server still holds fp32."""
    seen: list[tuple[str, ArrayRecord]] = []

    def spy(inner, message, context):
        seen.append(("to", message.content["arrays"]))
        reply = inner(message, context)
        seen.append(("from", reply.content["arrays"]))
        return reply

    lossy = dataclasses.replace(cfg, wire=wire)
    report = simulate(lossy, tmp_path, backend="inprocess", client_app=wrapped(lossy, spy),
                      plot=False)  # fmt: skip
    state = load_state(tmp_path)
    assert {a.dtype for a in state.tensors.values()} == {np.dtype(np.float32)}
    fp32 = encode(state.tensors, "fp32").count_bytes()
    sizes = {k: int(np.prod(v.shape)) for k, v in seen[0][1].items()}
    payload = 4 * sum(sizes.values())
    if wire == "fp16":
        assert fp32 - report.trainable_bytes == payload // 2
    else:
        assert report.trainable_bytes == sum(n + 4 + len(k) for k, n in sizes.items())
    assert len(seen) == 2 * 2 * 4
    for _, record in seen:
        assert record.count_bytes() == report.trainable_bytes
    for r in report.rounds[1:]:
        assert r["bytes_to_client"] == report.trainable_bytes
        assert r["bytes_from_client"] == {str(p): report.trainable_bytes for p in range(4)}
    accuracy = [r["accuracy"] for r in report.rounds]
    assert accuracy[2] > accuracy[0] + 0.1
    assert all(r["finished"] == 4 for r in report.rounds[1:])


def test_a_bad_update_on_a_lossy_wire_is_rejected(cfg, tmp_path):
    """On the fp16 wire, NaN, a float32 payload and a torn payload are each rejected."""

    def faulty(inner, message, context):
        p = context.node_config["partition-id"]
        reply = inner(message, context)
        arrays = dict(reply.content["arrays"].items())
        name = sorted(arrays)[0]
        if p == 1:
            arrays[name] = Array(np.full(arrays[name].shape, np.nan, np.float16))
        elif p == 2:
            arrays[name] = Array(arrays[name].numpy().astype(np.float32))
        elif p == 3:
            torn = arrays[name]
            arrays[name] = Array(torn.dtype, tuple(torn.shape), torn.stype, torn.data[:-2])
        records = {"arrays": ArrayRecord(arrays), "metrics": reply.content["metrics"]}
        return Message(RecordDict(records), reply_to=message)

    one = dataclasses.replace(cfg, rounds=1, wire="fp16")
    report = simulate(one, tmp_path, backend="inprocess", client_app=wrapped(one, faulty),
                      plot=False)  # fmt: skip
    r = report.final
    assert (r["finished"], r["rejected"]) == (1, 3)
    assert "NaN" in r["rejections"]["1"]
    assert "expected float16" in r["rejections"]["2"]
    assert "unreadable" in r["rejections"]["3"]
    assert r["accuracy"] > report.rounds[0]["accuracy"]


def test_the_q8_wire_round_trips_within_half_a_step():
    from facto_edge.fleet.config import WIRE_NAMES
    from facto_edge.fleet.wire import WIRES, decode, decode_up, encode_up

    assert tuple(WIRES) == WIRE_NAMES

    rng = np.random.default_rng(0)
    x = {"w": rng.normal(size=(3, 5)).astype(np.float32), "z": np.zeros(4, np.float32)}
    got = decode(encode(x, "q8"), {k: v.shape for k, v in x.items()}, "q8")
    step = np.abs(x["w"]).max() / 127
    assert np.abs(got["w"] - x["w"]).max() <= step / 2 + 1e-7
    np.testing.assert_array_equal(got["z"], x["z"])
    # up, the change from what came is sent, and added to the server's own tensors
    came = decode(encode(x, "fp16"), {k: v.shape for k, v in x.items()}, "fp16")
    trained = {k: v + 0.01 for k, v in came.items()}
    merged = decode_up(encode_up(trained, came, "fp16"), x, "fp16")
    np.testing.assert_allclose(merged["w"], x["w"] + 0.01, atol=1e-5)
    bad = encode({"w": x["w"]}, "q8")
    assert check_update(bad, {"w": x["w"][:2]}, "q8").startswith("tensor 'w' is facto-edge.q8")

"""Mutual TLS on a real cluster: robots with a certificate from the cluster's CA step it and get
what the model computes in-process; a plaintext client, a client without a certificate and one
whose certificate another CA signed are refused, at the coordinator and at a shard; etcd wants
a client certificate too, the private Redis a password from a secrets file; a replaced server certificate is served to new connections without a
restart."""

from __future__ import annotations

import socket
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
import torch
from cryptography import x509

from actionmesh_client.client_tls import client_credentials, open_channel
from chaos.reference import observations, reference_run
from service.cli import status
from service.client import ActionMeshClient, ClientTls
from service.local.dev_certs import Authority, issue, write_dev_certs, write_role
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.proto import session_pb2, session_pb2_grpc, stage_pb2, stage_pb2_grpc
from service.runtime.command_settings import StatusSettings
from service.runtime.tls import channel_credentials, etcd_tls
from state.etcd_client import EtcdConnection, EtcdUnavailable
from state.redis_url import read_secret
from tests.conftest import SMALL_MODEL, cluster_settings

STEPS = 20
ATOL = 1e-5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    work_dir = tmp_path_factory.mktemp("tls-cluster")
    with LocalCluster(cluster_settings(work_dir, tls=True), model=SMALL_MODEL) as running:
        yield running


def _open_session(channel: grpc.Channel) -> None:
    session_pb2_grpc.SessionServiceStub(channel).OpenSession(
        session_pb2.OpenSessionRequest(client_id="probe"), timeout=5
    )


def test_tls_cluster_steps_and_equals_the_reference(cluster: LocalCluster) -> None:
    obs = observations(0, STEPS, cluster.model.observation_dim)
    with (
        ActionMeshClient([cluster.address], tls=cluster.client_tls("robot-a")) as client,
        client.session() as session,
    ):
        actions = [session.step(o).action for o in obs]
    model, _ = weights.load_model(cluster.weights_dir)
    want, _ = reference_run(model, obs)
    for seq, (got, expected) in enumerate(zip(actions, want, strict=True), start=1):
        assert torch.allclose(torch.from_numpy(got), expected, atol=ATOL), f"seq={seq} differs"


def test_plaintext_client_is_refused(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(cluster.address) as channel, pytest.raises(grpc.RpcError) as no:
        _open_session(channel)
    assert no.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_a_certificate_is_refused(cluster: LocalCluster) -> None:
    assert cluster.tls_dir is not None
    ca_only = client_credentials((cluster.tls_dir / "ca.pem").read_bytes())
    with open_channel(cluster.address, ca_only) as channel, pytest.raises(grpc.RpcError) as no:
        _open_session(channel)
    assert no.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_from_another_ca_is_refused(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The stranger trusts the cluster's CA (so the server side of the handshake succeeds):
    what fails is the coordinator verifying a certificate its CA did not sign."""
    assert cluster.tls_dir is not None
    write_dev_certs(tmp_path, roles=["robot-a"])
    stranger = ClientTls(
        cluster.tls_dir / "ca.pem", tmp_path / "robot-a.pem", tmp_path / "robot-a.key"
    )
    with (
        open_channel(cluster.address, stranger.credentials()) as channel,
        pytest.raises(grpc.RpcError) as no,
    ):
        _open_session(channel)
    assert no.value.code() == grpc.StatusCode.UNAVAILABLE


def test_shard_refuses_plaintext_and_robots_cannot_call_it_without_tls(
    cluster: LocalCluster,
) -> None:
    """The coordinators reach shards over TLS (the cluster steps); plaintext to a shard fails."""
    shard = cluster.stage_addresses()[0]
    with grpc.insecure_channel(shard) as channel, pytest.raises(grpc.RpcError) as no:
        stage_pb2_grpc.StageServiceStub(channel).Info(stage_pb2.InfoRequest(), timeout=5)
    assert no.value.code() == grpc.StatusCode.UNAVAILABLE


def test_shard_serves_only_the_clusters_own_certificate(cluster: LocalCluster) -> None:
    """Any certificate the CA signed passes the handshake: a robot's still cannot call a shard
    (it would bypass the coordinator's identities and ownership); the cluster's own can."""
    shard, tls_dir = cluster.stage_addresses()[0], cluster.tls_dir
    assert tls_dir is not None
    with (
        open_channel(shard, channel_credentials(tls_dir, "robot-a")) as channel,
        pytest.raises(grpc.RpcError) as robot,
    ):
        stage_pb2_grpc.StageServiceStub(channel).Info(stage_pb2.InfoRequest(), timeout=5)
    assert robot.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'robot-a'" in (robot.value.details() or "")
    with open_channel(shard, channel_credentials(tls_dir, "shard")) as channel:
        stage_pb2_grpc.StageServiceStub(channel).Info(stage_pb2.InfoRequest(), timeout=5)


def _served_serial(address: str, tls_dir: Path) -> int:
    """The serial of the certificate the server presents to a new TLS connection."""
    context = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    context.load_cert_chain(tls_dir / "robot-b.pem", tls_dir / "robot-b.key")
    context.set_alpn_protocols(["h2"])  # gRPC servers refuse a handshake without it
    host, _, port = address.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_replaced_server_certificate_is_served_without_restart(cluster: LocalCluster) -> None:
    assert cluster.tls_dir is not None and cluster.coordinator is not None
    pid = cluster.coordinator.pid
    before = _served_serial(cluster.address, cluster.tls_dir)
    cert, key = issue(Authority.load(cluster.tls_dir), "coordinator")
    assert cert.serial_number != before
    write_role(cluster.tls_dir, "coordinator", cert, key)
    deadline = time.monotonic() + 10
    while (served := _served_serial(cluster.address, cluster.tls_dir)) == before:
        assert time.monotonic() < deadline, "the coordinator still serves the old certificate"
        time.sleep(0.1)
    assert served == cert.serial_number
    assert cluster.coordinator.pid == pid and cluster.coordinator.returncode() is None
    # and robots still step through it, over the new certificate
    with (
        ActionMeshClient([cluster.address], tls=cluster.client_tls("robot-b")) as client,
        client.session() as session,
    ):
        session.step(observations(1, 1, cluster.model.observation_dim)[0])


def test_etcd_requires_a_client_certificate(cluster: LocalCluster) -> None:
    """Every process reached the cluster's etcd over mutual TLS (shards registered, the
    coordinator found them); a plaintext client of the same etcd gets nothing."""
    assert cluster.tls_dir is not None
    plain = EtcdConnection(cluster.etcd_url, 1.0)
    try:
        with pytest.raises(EtcdUnavailable):
            plain.get("health")
    finally:
        plain.close()
    secure = EtcdConnection(cluster.etcd_url, 2.0, etcd_tls(cluster.tls_dir, "admin"))
    try:
        secure.get("health")  # answers (the key need not exist)
    finally:
        secure.close()


def test_status_probes_the_stages_over_tls(cluster: LocalCluster) -> None:
    assert cluster.tls_dir is not None
    settings = StatusSettings(etcd=cluster.etcd_url, tls_dir=cluster.tls_dir)
    stages = status.collect(settings)["stages"]
    assert len(stages) == cluster.model.n_stages
    assert all(stage["leader"]["health"] == "SERVING" for stage in stages)


def test_private_redis_wants_the_password_from_the_secrets_file(cluster: LocalCluster) -> None:
    """The coordinator got the password from a file (it steps: the first test); a client
    without it is refused."""
    assert cluster.redis_password_file is not None
    assert stat.S_IMODE(cluster.redis_password_file.stat().st_mode) == 0o600
    with (
        redis.Redis.from_url(cluster.redis_url) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
    password = read_secret(cluster.redis_password_file)
    with redis.Redis.from_url(cluster.redis_url, password=password) as client:
        assert client.ping()

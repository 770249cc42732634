"""Who may use control verbs: SO_PEERCRED and SO_PEERGROUPS on a real socket pair."""

import os
import socket
import subprocess
import tempfile

import pytest

from ingestd.statsock.server import may_control, peer_credentials, resolve_group, supplementary_groups


def test_peer_credentials_are_the_kernels():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        pid, uid, gid, groups = peer_credentials(a)
    assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())
    assert groups == set(os.getgroups())


@pytest.mark.skipif(os.geteuid() != 0, reason="setting another process's groups needs root")
def test_a_peers_supplementary_groups_come_from_the_socket():
    """Another process with groups of its own, as an operator's shell beside the daemon: the kernel's
    record at connect() names them (the unit's ProtectProc=invisible hides its /proc entry)."""
    with tempfile.TemporaryDirectory() as folder, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        os.chmod(folder, 0o711)  # pytest's tmp_path is root's alone; the peer runs as nobody
        path = os.path.join(folder, "s.sock")
        server.bind(path)
        os.chmod(path, 0o666)
        server.listen(1)
        server.settimeout(20)
        client = subprocess.Popen(
            ["/usr/bin/python3", "-c", f"import socket, time; s = socket.socket(socket.AF_UNIX); "
                                   f"s.connect({path!r}); s.recv(1)"],
            user=65534, group=65534, extra_groups=[4242, 4343])
        try:
            conn, _ = server.accept()
            with conn:
                pid, uid, gid, groups = peer_credentials(conn)
                conn.send(b"x")
        finally:
            client.wait(timeout=10)
    assert (pid, uid, gid, groups) == (client.pid, 65534, 65534, {4242, 4343})


def test_proc_fallback_reads_the_groups_line():
    assert supplementary_groups(os.getpid()) == set(os.getgroups())
    assert supplementary_groups(2**22 + 12345) == set()  # no such process: no groups


def test_may_control():
    assert may_control(0, 0, frozenset(), None)  # root, whatever the group
    assert not may_control(1000, 1000, frozenset({4}), None)  # no admin group: root only
    assert may_control(1000, 4, frozenset(), 4)  # primary group
    assert may_control(1000, 1000, frozenset({7, 4}), 4)  # a supplementary group
    assert not may_control(1000, 1000, frozenset({7}), 4)


def test_a_missing_admin_group_means_root_only():
    assert resolve_group(None) is None
    assert resolve_group("no-such-group-here") is None
    assert resolve_group("root") == 0

"""Who may use control verbs: SO_PEERCRED on a real socket pair, groups from /proc."""

import os
import socket

from ingestd.statsock.server import may_control, peer_credentials, resolve_group, supplementary_groups


def test_peer_credentials_are_the_kernels():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())


def test_supplementary_groups_come_from_proc():
    assert supplementary_groups(os.getpid()) == set(os.getgroups())
    assert supplementary_groups(2**22 + 12345) == set()  # no such process: no groups


def test_may_control():
    gone = 2**22 + 12345
    assert may_control(gone, 0, 0, None)  # root, whatever the group
    assert not may_control(gone, 1000, 1000, None)  # no admin group: root only
    assert may_control(gone, 1000, 4, 4)  # primary group
    assert not may_control(gone, 1000, 1000, 4)
    for g in os.getgroups():  # a supplementary group of a live process (ours)
        assert may_control(os.getpid(), 1000, 99999, g)


def test_a_missing_admin_group_means_root_only():
    assert resolve_group(None) is None
    assert resolve_group("no-such-group-here") is None
    assert resolve_group("root") == 0

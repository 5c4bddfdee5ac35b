"""Which file system holds the data directory, read from a mount table given as a file.

The tables are written to `tmp_path` in proc(5)'s format and passed to the
detection as its `mountinfo` parameter; nothing of the OS is patched.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from moorage.broker.mounts import (
    FileSystemKind,
    UnsafeFileSystem,
    check_shared_storage,
    classify,
    find_mount,
    parse_mountinfo,
)
from moorage.broker.shared_storage import SharedStorage

TABLE = """\
22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw
27 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
40 27 0:35 / /srv/efs rw,relatime shared:20 - nfs4 fs-123.efs.eu-west-1.amazonaws.com:/ rw,vers=4.1
41 40 259:3 / /srv/efs/local rw,relatime shared:21 - xfs /dev/nvme1n1 rw
42 27 0:36 / /mnt/with\\040space rw - cifs //nas/share rw
43 27 0:37 / /mnt/sshfs rw,nosuid - fuse.sshfs user@host:/data rw
44 27 0:38 / /mnt/cluster rw - gfs2 /dev/mapper/shared rw
45 27 0:39 / /mnt/odd rw - weirdfs none rw
46 27 0:40 / /mnt/over rw - nfs server:/a rw
47 27 0:41 / /mnt/over rw - ext4 /dev/sdb1 rw
not a mount line at all
48 27 0:42 / /truncated rw -
"""


@pytest.fixture
def mountinfo(tmp_path: Path) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(TABLE)
    return path


@pytest.mark.parametrize(
    ("data_dir", "fs_type", "kind"),
    [
        ("/var/lib/moorage", "ext4", FileSystemKind.LOCAL),
        ("/srv/efs/moorage", "nfs4", FileSystemKind.NETWORK),
        ("/srv/efs", "nfs4", FileSystemKind.NETWORK),
        ("/srv/efs/local/moorage", "xfs", FileSystemKind.LOCAL),  # a disk mounted inside NFS
        ("/srv/efsx/moorage", "ext4", FileSystemKind.LOCAL),  # a prefix, not a parent
        ("/mnt/with space/data", "cifs", FileSystemKind.NETWORK),  # \040 unescaped
        ("/mnt/sshfs/q", "fuse.sshfs", FileSystemKind.NETWORK),
        ("/mnt/cluster/q", "gfs2", FileSystemKind.CLUSTERED),
        ("/mnt/odd/q", "weirdfs", FileSystemKind.UNKNOWN),
        ("/mnt/over/q", "ext4", FileSystemKind.LOCAL),  # mounted over the NFS one
    ],
)
def test_the_data_directorys_mount_is_the_longest_mount_point_above_it(
    mountinfo: Path, data_dir: str, fs_type: str, kind: FileSystemKind
) -> None:
    mount = find_mount(data_dir, mountinfo)
    assert mount is not None
    assert (mount.fs_type, mount.kind) == (fs_type, kind)


def test_malformed_lines_are_skipped() -> None:
    mounts = parse_mountinfo(TABLE)
    assert [m.mount_point for m in mounts][:2] == ["/proc", "/"]
    assert "/truncated" not in {m.mount_point for m in mounts}
    assert parse_mountinfo("") == []
    assert parse_mountinfo("1 2 3\n- - -\n") == []


@pytest.mark.parametrize("data_dir", ["/srv/efs/moorage", "/mnt/with space/x", "/mnt/sshfs"])
def test_network_file_systems_are_refused(mountinfo: Path, data_dir: str) -> None:
    with pytest.raises(UnsafeFileSystem, match="network file system"):
        check_shared_storage(data_dir, mountinfo)


@pytest.mark.parametrize("data_dir", ["/var/lib/moorage", "/mnt/cluster/q", "/mnt/odd/q"])
def test_local_clustered_and_unknown_ones_are_allowed(mountinfo: Path, data_dir: str) -> None:
    assert check_shared_storage(data_dir, mountinfo) is not None


def test_no_mount_table_means_no_verdict(tmp_path: Path) -> None:
    assert find_mount("/var/lib/moorage", tmp_path / "missing") is None
    assert check_shared_storage("/var/lib/moorage", tmp_path / "missing") is None


def test_the_broker_refuses_nfs_warns_about_unknown_and_trusts_local_locks(
    mountinfo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An in-process daemon started by an earlier test may have set the
    # root level from its configuration; this test asks for warnings.
    caplog.set_level(logging.WARNING)
    with pytest.raises(UnsafeFileSystem, match="nfs4"):
        SharedStorage(Path("/srv/efs/moorage")).check_file_system(mountinfo)
    unknown = SharedStorage(Path("/mnt/odd/q"))
    unknown.check_file_system(mountinfo)
    assert "weirdfs" in caplog.text
    assert not unknown.trust_lock  # a takeover there also asks the lease
    clustered = SharedStorage(Path("/mnt/cluster/q"))
    clustered.check_file_system(mountinfo)
    assert not clustered.trust_lock
    caplog.clear()
    local = SharedStorage(Path("/var/lib/moorage"))
    local.check_file_system(mountinfo)
    assert caplog.text == ""
    assert local.trust_lock  # a free lock proves its holder gone
    nowhere = SharedStorage(Path("/var/lib/moorage"))
    nowhere.check_file_system(tmp_path / "no-mountinfo")
    assert "cannot tell" in caplog.text
    assert not nowhere.trust_lock


def test_every_known_type_has_one_kind() -> None:
    assert classify("nfs") is FileSystemKind.NETWORK
    assert classify("tmpfs") is FileSystemKind.LOCAL
    assert classify("ocfs2") is FileSystemKind.CLUSTERED
    assert classify("") is FileSystemKind.UNKNOWN

"""Which file system holds a directory, and whether shared-storage mode may run on it.

Shared-storage mode (`broker.shared_storage`) puts two broker processes on one
data directory. Its safety rests on two things the file system must provide:
an OS lock that is released only when its holder dies (`flock`, and SQLite's
own POSIX locks on the database), and `fsync` that means what it says. The
SQLite file is opened with ``locking_mode=EXCLUSIVE`` (`storage.sqlite.schema`),
so its WAL index lives in the process's heap, not in a shared-memory file:
only one process ever has the database open, and nothing relies on ``mmap``
being coherent between processes.

Network file systems break the first promise. SQLite's documentation says
WAL "does not work over a network filesystem", and NFS, SMB/CIFS, 9p and
FUSE file systems such as sshfs either implement POSIX locks loosely,
emulate them on the client, or drop them when a client is cut off (an NFSv4
server frees the locks of a client whose lease lapsed, while that client may
still be running). Two brokers could then both believe they hold the store.
Those file systems are refused outright (`NETWORK`). A local disk shared by
two processes on one machine is what Moorage is tested on (`LOCAL`).
Clustered file systems with a distributed lock manager (GFS2, OCFS2, GPFS,
Lustre, CephFS, GlusterFS) promise coherent POSIX locks across machines, but
Moorage has not been tested on any of them: they are allowed with a warning
(`CLUSTERED`), as is any file system not named here (`UNKNOWN`).

The mount table is read from ``/proc/self/mountinfo`` (proc(5)), no
`os.statvfs`: its ``f_fsid`` does not name the file system type. The path of
the table is a parameter so that tests feed their own tables.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")


class FileSystemKind(Enum):
    """What Moorage knows of a file system type, for shared-storage mode."""

    LOCAL = "local"  # one machine's disk (or memory): tested, safe for two processes
    CLUSTERED = "clustered"  # claims cluster-wide POSIX locks; not verified by Moorage
    NETWORK = "network"  # locks unreliable across machines: refused
    UNKNOWN = "unknown"  # not in these lists, or no mount table to read


LOCAL_TYPES = frozenset(
    {
        "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs",
        "bcachefs", "nilfs2", "tmpfs", "ramfs", "overlay", "hfsplus", "apfs", "vfat",
        "exfat", "ntfs", "ntfs3",
    }
)  # fmt: skip
CLUSTERED_TYPES = frozenset(
    {"gfs2", "ocfs2", "gpfs", "lustre", "ceph", "glusterfs", "fuse.glusterfs", "beegfs"}
)
NETWORK_TYPES = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ncpfs", "coda", "davfs",
        "sshfs", "fuse.sshfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.goofys",
        "fuse.davfs2", "fuse.cephfs-ganesha",
    }
)  # fmt: skip


def classify(fs_type: str) -> FileSystemKind:
    """The kind of a file system type as proc(5) spells it (`ext4`, `nfs4`, `fuse.sshfs`)."""
    if fs_type in NETWORK_TYPES:
        return FileSystemKind.NETWORK
    if fs_type in LOCAL_TYPES:
        return FileSystemKind.LOCAL
    if fs_type in CLUSTERED_TYPES:
        return FileSystemKind.CLUSTERED
    return FileSystemKind.UNKNOWN


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of the mount table: where a file system is mounted and what it is."""

    mount_point: str
    fs_type: str
    source: str

    @property
    def kind(self) -> FileSystemKind:
        return classify(self.fs_type)


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """proc(5) writes space, tab, newline and backslash in paths as `\\040` and so on."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a `/proc/<pid>/mountinfo` text, in its order; malformed lines are skipped.

    A line is `id parent major:minor root mount-point options [optional...] -
    fs-type source super-options` (proc(5)); the optional fields end at `-`.
    """
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < separator + 3:
            continue
        mount_point = _unescape(fields[4])
        fs_type, source = fields[separator + 1], _unescape(fields[separator + 2])
        mounts.append(Mount(mount_point, fs_type, source))
    return mounts


def mount_of(path: str | os.PathLike[str], mounts: list[Mount]) -> Mount | None:
    """The mount that holds `path` (resolved): the longest mount point above it.

    Of two mounts on one mount point the later one is the visible one (it was
    mounted over the other), as in the table's order.
    """
    target = os.path.realpath(path)
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = mount
    return best


def find_mount(path: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> Mount | None:
    """The mount holding `path` according to the table at `mountinfo`; None when unreadable.

    `path` need not exist yet (`os.path.realpath` resolves the links of the
    part that exists and keeps the rest).
    """
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None  # not Linux, or /proc not mounted
    return mount_of(path, parse_mountinfo(text))


class UnsafeFileSystem(Exception):
    """The data directory is on a file system shared-storage mode refuses; says which."""


def check_shared_storage(path: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> Mount | None:
    """Refuse a data directory on a network file system; return its mount otherwise.

    Raises:
        UnsafeFileSystem: `path` is on a `NETWORK` file system (NFS, SMB, 9p,
            sshfs, ...), whose locks cannot keep two brokers apart.

    The caller warns about `CLUSTERED` and `UNKNOWN` results (and about None:
    no mount table to read).
    """
    mount = find_mount(path, mountinfo)
    if mount is not None and mount.kind is FileSystemKind.NETWORK:
        raise UnsafeFileSystem(
            f"{path} is on {mount.fs_type} ({mount.source} at {mount.mount_point}), a network "
            "file system whose locks cannot keep two brokers apart; shared-storage mode needs "
            "a local disk or a clustered file system (see docs/failover.md, Shared storage)"
        )
    return mount

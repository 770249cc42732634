"""A Debian bookworm machine for system tests: a real systemd booted as PID 1 of a PID namespace.

The root file system is made once by debootstrap and cached (CACHE/bookworm-rootfs); each boot
mounts a throwaway overlay on top of it, so a test can install and purge packages without
touching the cache, and a repeat run boots in seconds. The namespace shares the host's network,
so a simulator on the host's loopback is reachable from inside.

Why pivot_root and not chroot (as the recipe in shared/reference/ops.md has it): a chrooted
process may not create user namespaces, and the unit's PrivateUsers=yes then fails every start
with "Failed to set up user namespacing: Operation not permitted". After pivot_root the root
directory is the mount namespace's own root, as on a real machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# What the root file system holds besides minbase: systemd as init, and python3.11, which the
# package depends on, so `apt install ./ingestd_*.deb` needs nothing from the network.
ROOTFS_INCLUDE = "systemd,systemd-sysv,dbus,python3,libgcc-s1,procps"
ROOTFS_RECIPE = f"debootstrap --variant=minbase --include={ROOTFS_INCLUDE} bookworm; apt-get update"
MASKED_UNITS = (
    "getty.target", "getty@.service", "serial-getty@.service", "console-getty.service",
    "systemd-modules-load.service", "systemd-sysctl.service", "systemd-binfmt.service",
    "systemd-pstore.service", "sys-kernel-config.mount", "sys-fs-fuse-connections.mount",
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer",
)
MIRROR = os.environ.get("INGESTD_TEST_MIRROR", "http://deb.debian.org/debian")


def cache_dir() -> Path:
    """$INGESTD_TEST_CACHE, else $XDG_CACHE_HOME/ingestd-test (~/.cache/ingestd-test)."""
    if os.environ.get("INGESTD_TEST_CACHE"):
        return Path(os.environ["INGESTD_TEST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ingestd-test"


def skip_unless_supported() -> None:
    """Skip (with the reason) where this machine cannot boot systemd in a namespace."""
    if os.geteuid() != 0:
        pytest.skip("system tests boot systemd in a PID namespace and need root (unshare, mount)")
    for tool in ("unshare", "nsenter", "pivot_root", "debootstrap", "dpkg-buildpackage", "dh_virtualenv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing: scripts/bootstrap.sh --test installs the system tests' tools")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create PID/mount namespaces here: {probe.stderr.strip()}")


def cached_rootfs() -> Path:
    """The pristine bookworm root file system, made on first use (about a minute)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    rootfs, stamp = cache / "bookworm-rootfs", cache / "bookworm-rootfs.recipe"
    with open(cache / "bookworm-rootfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be making it right now
        if rootfs.is_dir() and stamp.exists() and stamp.read_text() == ROOTFS_RECIPE:
            return rootfs
        shutil.rmtree(rootfs, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        work = cache / "bookworm-rootfs.new"
        shutil.rmtree(work, ignore_errors=True)
        log = cache / "debootstrap.log"
        with open(log, "wb") as out:
            made = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={ROOTFS_INCLUDE}", "bookworm", str(work), MIRROR],
                stdout=out, stderr=subprocess.STDOUT, timeout=900,
            )
        if made.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            tail = log.read_text(errors="replace")[-1500:]
            pytest.skip(f"debootstrap from {MIRROR} failed (no Debian mirror reachable?); {log}:\n{tail}")
        # Package lists, so apt inside can resolve (and if need be fetch) dependencies.
        shutil.copy("/etc/resolv.conf", work / "etc/resolv.conf")
        subprocess.run(["chroot", str(work), "apt-get", "update", "-qq"], check=True, timeout=300,
                       capture_output=True)
        subprocess.run(["chroot", str(work), "apt-get", "clean"], check=True, capture_output=True)
        work.rename(rootfs)
        stamp.write_text(ROOTFS_RECIPE)
        return rootfs


def built_package() -> Path:
    """The .deb of the current sources: packaging/build-deb.sh, which rebuilds only when they
    changed (its output is keyed by a hash of them) and runs lintian on what it builds."""
    out = cache_dir() / "deb"
    built = subprocess.run([str(REPO / "packaging/build-deb.sh"), "--out", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, f"packaging/build-deb.sh failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    debs = sorted(out.glob("ingestd_*.deb"), key=lambda p: p.stat().st_mtime)
    assert debs, built.stdout
    return debs[-1]


class Machine:
    """systemd 252 as PID 1 of a fresh PID, mount, UTS and IPC namespace over an overlay of the
    cached root file system. `run` executes a command inside, as root; `path` maps a path inside
    to one the host can open (through /proc/PID/root, i.e. through the same overlay)."""

    def __init__(self, rootfs: Path, workdir: Path) -> None:
        self.rootfs = rootfs
        self.workdir = workdir
        self.pid: int | None = None
        self._unshare: subprocess.Popen | None = None

    def boot(self, timeout: float = 90) -> None:
        for name in ("upper", "work", "root"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        # Masked in this boot's overlay: units that would reach beyond the namespace (gettys on
        # the host's consoles, kernel modules, sysctls), wait for devices no udev will announce,
        # or run apt on a timer while a test does.
        masks = self.workdir / "upper/etc/systemd/system"
        masks.mkdir(parents=True, exist_ok=True)
        for unit in MASKED_UNITS:
            (masks / unit).symlink_to("/dev/null")
        root, lower = self.workdir / "root", self.rootfs
        script = f"""
            set -e
            if ! mount -t overlay overlay -o lowerdir={lower},upperdir={self.workdir}/upper,workdir={self.workdir}/work {root}; then
                echo "no overlayfs here: copying the root file system" >&2
                cp -a {lower}/. {root}/ && mount --bind {root} {root}
            fi
            mount -t proc proc {root}/proc
            mount --rbind /sys {root}/sys
            mount --rbind /dev {root}/dev
            mount -t tmpfs tmpfs {root}/run
            mount -t tmpfs tmpfs {root}/tmp
            cd {root}
            mkdir -p .oldroot
            pivot_root . .oldroot
            umount -l /.oldroot
            rmdir /.oldroot
            # container= tells systemd it is not the host's init: it then leaves swap, devices,
            # the kernel's settings and the machine's power alone (systemctl poweroff ends only us).
            exec env container=ingestd-test /lib/systemd/systemd --system --unit=multi-user.target
        """
        console = open(self.workdir / "console.log", "wb")
        self._unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while self.pid is None:
            children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
            try:
                pids = children.read_text().split()
                if pids and Path(f"/proc/{pids[0]}/comm").read_text().strip() == "systemd":
                    self.pid = int(pids[0])
            except OSError:
                pass
            if self._unshare.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"systemd did not start:\n{self.console()}")
            time.sleep(0.1)
        # Until systemd has its control socket up, systemctl answers "offline" at once.
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                jobs = self.run("systemctl", "list-jobs", "--no-pager", check=False).stdout
                raise AssertionError(f"systemd did not finish booting; jobs:\n{jobs}\n{self.console()}")
            try:
                state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=left).stdout.strip()
            except subprocess.TimeoutExpired:
                continue
            if state in ("running", "degraded"):
                return
            time.sleep(0.2)

    def console(self) -> str:
        return (self.workdir / "console.log").read_text(errors="replace")[-3000:]

    def run(self, *args: str, check: bool = True, timeout: float = 60, user: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        assert self.pid is not None
        command = list(args)
        if user is not None:
            command = ["runuser", "-u", user, "--", *command]
        if env:
            command = ["env", *(f"{k}={v}" for k, v in env.items()), *command]
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "-r", "-w", *command],
            capture_output=True, text=True, timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "",
                 "SYSTEMD_COLORS": "0", "DEBIAN_FRONTEND": "noninteractive"},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def path(self, inside: str) -> Path:
        assert self.pid is not None
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def query(self, db: str, sql: str) -> list[list] | None:
        """Rows of a read-only SQLite query, run inside with Debian's python3 (the host's sqlite3
        cannot open a path under /proc/PID/root: it resolves that link to the host's /). None
        while the database or its tables do not exist yet."""
        script = (
            "import json, sqlite3, sys\n"
            "try:\n"
            "    con = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True, timeout=10)\n"
            "    print(json.dumps(con.execute(sys.argv[2]).fetchall()))\n"
            "except sqlite3.OperationalError as exc:\n"
            "    print(json.dumps(None)); print(exc, file=sys.stderr)\n"
        )
        return json.loads(self.run("python3", "-c", script, db, sql).stdout)

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()

    def journal(self, unit: str) -> list[dict]:
        """Every journal entry of `unit` (journalctl -o json): MESSAGE, PRIORITY, _PID, ..."""
        out = self.run("journalctl", "-u", unit, "-o", "json", "--no-pager").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def shutdown(self, timeout: float = 30) -> None:
        if self._unshare is None:
            return
        if self._unshare.poll() is None and self.pid is not None:
            self.run("systemctl", "poweroff", check=False, timeout=15)
            try:
                self._unshare.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, 9)  # PID 1 of the namespace: the kernel ends everything in it
                self._unshare.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)

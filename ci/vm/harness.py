#!/usr/bin/env python3
"""The VM harness shared by ci/vm-test and ci/vm-bench.

One run: make sure the host tools and a Debian 6.12 cloud kernel are present (cached in
ci/cache/), build static guest binaries, pack a busybox initramfs, boot QEMU (TCG, q35, an
intel-iommu, several emulated NVMe controllers at fixed PCI addresses), stream the serial
console, and judge the run: libtest result lines, end markers, guest panics, a wall-clock
timeout, and the QEMU trace oracle (pci_nvme_ub_* never, pci_nvme_err_* only when a test
declared it). See ci/vm/README.md for the guest side (matrix file, env vars, markers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench  # ci/vm/bench.py (this file's directory is on sys.path)

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "ci" / "cache"
OUT = ROOT / "ci" / "out"
VM_DIR = ROOT / "ci" / "vm"

TARGET = "x86_64-unknown-linux-gnu"

# ---------------------------------------------------------------------------------------------
# What goes into the guest. Extend these lists; nothing else needs to change.
#
# VM_TESTS: integration test targets (cargo `--test NAME` of a package). Each one is run in the
# guest, one after the other, as `BIN --test-threads=1 --include-ignored [filter args]`
# (VM-only tests are `#[ignore]`d on the host so a host run reports them as ignored, never as
# passed).
VM_TESTS: list[tuple[str, str]] = [
    ("nvme-dio-tests", "vm"),
    ("nvme-dio-tests", "vm_dma"),
    ("nvme-dio-tests", "vm_driver"),
    ("nvme-dio-tests", "vm_cli"),
    ("nvme-dio-tests", "vm_examples"),
    ("nvme-dio-tests", "vm_fio"),
    # Issue 15 (services): poll groups, hybrid completion, events, logs. Uses the default
    # and mdts0 controllers; no devices of its own.
    ("nvme-dio-tests", "vm_services"),
]
# EXTRA_BINS: other binaries copied to the guest's /bin (a test may run them by name):
# ("bin", package, name) or ("example", package, name). A missing one fails the build.
EXTRA_BINS: list[tuple[str, str, str]] = [
    ("bin", "nvme-dio-cli", "nvme-dio"),
    ("example", "nvme-dio-examples", "wal"),
]
# C programs linked statically against the C ABI (capi/), put in /bin as NAME:
# (name, source).
C_PROGRAMS: list[tuple[str, str]] = [
    ("wal_c", "examples/c/wal.c"),
]

# The fio engine (fio/) and fio itself, built from the same Debian source by
# `fio/build.sh --with-fio`, go into the guest at these paths, with the shared libraries
# both need at their host paths (both link glibc dynamically: fio dlopen()s the engine).
FIO_GUEST_BIN = "/bin/fio"
FIO_GUEST_ENGINE = "/lib/nvme-dio/libnvme_dio_fio.so"

# Kernel modules, in load order (vfio-pci needs the others loaded first; checked in the Debian 6.12 guest). null_blk is copied in, not loaded.
MODULES = ["irqbypass", "vfio", "vfio_iommu_type1", "vfio-pci-core", "vfio-pci"]
EXTRA_MODULES = ["null_blk"]

KERNEL_META = "linux-image-6.12-cloud-amd64"
APT_PACKAGES = {
    # command or file that shows the package is installed -> package
    "qemu-system-x86_64": "qemu-system-x86",
    "/bin/busybox": "busybox-static",
    "cpio": "cpio",
    "zstd": "zstd",
    "xz": "xz-utils",
}

QEMU_BASE = [
    "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "1G", "-smp", "2",
    "-machine", "q35,kernel-irqchip=split",
    "-device", "intel-iommu,intremap=on,caching-mode=on",
    "-nographic", "-no-reboot", "-vga", "none", "-nic", "none",
]
CMDLINE = "console=ttyS0 intel_iommu=on quiet panic=-1"


# ---------------------------------------------------------------------------------------------
# The device matrix. Each controller sits at a fixed slot on pcie.0, so its BDF is known here
# and written to the guest's /matrix (format in ci/vm/README.md).


@dataclasses.dataclass
class Namespace:
    nsid: int
    size_mib: int  # backing size; ignored for null-co
    # Extra `-device nvme-ns` properties ("ms=8,mset=1,pi=1"); a namespace with any is always
    # given as its own nvme-ns device. `ms` is its metadata bytes per block: QEMU sizes the
    # namespace as backing / (lba_size + ms) blocks.
    props: str = ""
    ms: int = 0


@dataclasses.dataclass
class Controller:
    slot: int
    role: str
    serial: str
    mdts: int
    lba_size: int
    namespaces: list[Namespace]
    null_co: bool = False  # back by QEMU's null-co driver instead of a raw file
    # Behind its own pcie-root-port (hot-pluggable: QMP device_del can remove it). The first
    # such port gets secondary bus 1, so only one controller may use it.
    root_port: bool = False
    # QEMU's MSI-X table size (None: its default, 65): smaller than the queue pairs makes
    # the driver share vectors.
    msix_qsize: int | None = None

    @property
    def bdf(self) -> str:
        return "0000:01:00.0" if self.root_port else f"0000:00:{self.slot:02x}.0"

    @property
    def qemu_id(self) -> str:
        return f"ctrl{self.slot:02x}"

    def matrix_line(self) -> str:
        ns = ",".join(
            f"{n.nsid}:{n.size_mib * 1024 * 1024 // (self.lba_size + n.ms)}"
            for n in self.namespaces
        )
        return f"{self.bdf} {self.role} {self.serial} {self.mdts} {self.lba_size} {ns}"

    def qemu_args(self, imgdir: Path) -> list[str]:
        cid = self.qemu_id
        args: list[str] = []
        drives = []
        for n in self.namespaces:
            did = f"{cid}n{n.nsid}"
            if self.null_co:
                size = n.size_mib * 1024 * 1024
                args += ["-drive", f"driver=null-co,read-zeroes=on,size={size},if=none,id={did}"]
            else:
                img = imgdir / f"{did}.img"
                with open(img, "wb") as f:
                    f.truncate(n.size_mib * 1024 * 1024)
                args += ["-drive", f"file={img},if=none,id={did},format=raw,cache=unsafe"]
            drives.append(did)
        blk = f"logical_block_size={self.lba_size},physical_block_size={self.lba_size}"
        if self.root_port:
            port = f"rp{self.slot:02x}"
            args += ["-device",
                     f"pcie-root-port,id={port},bus=pcie.0,chassis={self.slot},addr=0x{self.slot:x}"]
            where = f"bus={port}"
        else:
            where = f"bus=pcie.0,addr=0x{self.slot:x}"
        ctrl = f"nvme,id={cid},serial={self.serial},mdts={self.mdts},{where}"
        if self.msix_qsize is not None:
            ctrl += f",msix_qsize={self.msix_qsize}"
        if len(self.namespaces) == 1 and self.namespaces[0].nsid == 1 and not self.namespaces[0].props:
            args += ["-device", f"{ctrl},drive={drives[0]},{blk}"]
        else:
            args += ["-device", ctrl]
            for n, did in zip(self.namespaces, drives):
                extra = f",{n.props}" if n.props else ""
                args += ["-device", f"nvme-ns,drive={did},bus={cid},nsid={n.nsid},{blk}{extra}"]
        return args


TEST_MATRIX = [
    Controller(0x04, "default", "dflt0001", 7, 4096, [Namespace(1, 64)]),
    Controller(0x05, "mdts2", "mdts0002", 2, 4096, [Namespace(1, 64)]),
    Controller(0x06, "mdts0", "mdts0000", 0, 4096, [Namespace(1, 64)]),
    Controller(0x07, "ns512", "lba00512", 7, 512, [Namespace(1, 32), Namespace(2, 32)]),
    Controller(0x08, "hotplug", "hotp0001", 7, 4096, [Namespace(1, 32)], root_port=True),
    # Two MSI-X vectors (admin + one I/O) for several interrupt-mode queue pairs.
    Controller(0x09, "msix2", "msix0002", 7, 4096, [Namespace(1, 32)], msix_qsize=2),
]

# ---- issue 16, the data path (tests/tests/vm_datapath.rs): metadata and protection
# information. Two controllers, one per block size, each with the same seven namespaces;
# MDTS 2 (16 KiB) so that a 40-block transfer splits. Slots 0x16/0x17 keep clear of the
# other blocks.
def _datapath_namespaces() -> list[Namespace]:
    return [
        Namespace(1, 8, "ms=8,mset=0", 8),  # 8 B separate metadata (MPTR)
        Namespace(2, 8, "ms=8,mset=1", 8),  # 8 B extended (interleaved)
        Namespace(3, 8, "ms=8,mset=0,pi=1,pil=0", 8),  # type 1, tuple last, separate
        Namespace(4, 8, "ms=16,mset=1,pi=2,pil=1", 16),  # type 2, tuple first, extended
        Namespace(5, 8, "ms=16,mset=0,pi=3,pil=0", 16),  # type 3, 8 B before the tuple
        Namespace(6, 8, "ms=8,mset=1,pi=1,pil=1", 8),  # type 1, extended, PRACT strips
        Namespace(7, 8, "mssrl=4,mcl=8,msrc=1"),  # no metadata; Copy limits that split
    ]


TEST_MATRIX += [
    Controller(0x16, "meta512", "meta0512", 2, 512, _datapath_namespaces()),
    Controller(0x17, "meta4k", "meta4096", 2, 4096, _datapath_namespaces()),
]
VM_TESTS += [("nvme-dio-tests", "vm_datapath")]
# ---- end of the data path block

BENCH_MATRIX = [
    Controller(0x04, "bench", "null0001", 7, 4096, [Namespace(1, 1024)], null_co=True),
]


# ---------------------------------------------------------------------------------------------
# Host preparation


def log(msg: str) -> None:
    print(f"vm: {msg}", flush=True)


def die(msg: str, code: int = 1) -> None:
    print(f"vm: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def have(tool: str) -> bool:
    return Path(tool).exists() if tool.startswith("/") else shutil.which(tool) is not None


_apt_updated = False


def apt_update() -> None:
    global _apt_updated
    if not _apt_updated:
        log("apt-get update")
        run(["apt-get", "update", "-qq"])
        _apt_updated = True


def ensure_host_tools() -> None:
    missing = sorted({pkg for tool, pkg in APT_PACKAGES.items() if not have(tool)})
    if not missing:
        return
    if os.geteuid() != 0:
        die(f"missing host packages {missing}; install them as root: apt-get install -y {' '.join(missing)}")
    apt_update()
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "install", "-y", "-qq", *missing], env=env, stdout=subprocess.DEVNULL)


def resolve_kernel_package() -> str | None:
    """The versioned image package the meta package currently depends on, or None."""
    p = subprocess.run(
        ["apt-cache", "depends", KERNEL_META], capture_output=True, text=True
    )
    m = re.search(r"Depends:\s*(linux-image-6\.12\.\S+-cloud-amd64)", p.stdout)
    return m.group(1) if m else None


def kernel_dir(pkg: str) -> Path:
    return CACHE / "kernel" / pkg


def ensure_kernel() -> Path:
    """Returns a cache dir holding vmlinuz and modules/*.ko; fetches only when not cached."""
    pkg = resolve_kernel_package()
    if pkg and (kernel_dir(pkg) / "ready").exists():
        return kernel_dir(pkg)
    if pkg is None:
        # The apt lists may be stale: use what is cached before touching the network.
        cached = sorted((CACHE / "kernel").glob("*/ready")) if (CACHE / "kernel").exists() else []
        if cached:
            return cached[-1].parent
        apt_update()
        pkg = resolve_kernel_package()
        if pkg is None:
            die(f"apt cannot resolve {KERNEL_META}: check /etc/apt/sources.list* (it comes from bookworm-security)")
    kdir = kernel_dir(pkg)
    if kdir.exists():
        shutil.rmtree(kdir)
    kdir.mkdir(parents=True)
    log(f"fetching kernel {pkg}")
    # As root into a root-owned dir: tell apt not to drop to its _apt user for this download.
    download = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg]
    if subprocess.run(download, cwd=kdir, stdout=subprocess.DEVNULL).returncode != 0:
        # Stale lists can name a version the mirror no longer has.
        apt_update()
        pkg = resolve_kernel_package() or pkg
        download[-1] = pkg
        if (kernel_dir(pkg) / "ready").exists():
            shutil.rmtree(kdir)
            return kernel_dir(pkg)
        shutil.rmtree(kdir)
        kdir = kernel_dir(pkg)
        kdir.mkdir(parents=True)
        run(download, cwd=kdir, stdout=subprocess.DEVNULL)
    debs = list(kdir.glob("*.deb"))
    if len(debs) != 1:
        die(f"apt-get download {pkg} gave {debs}")
    root = kdir / "root"
    run(["dpkg-deb", "-x", str(debs[0]), str(root)])
    vmlinuz = sorted(root.glob("boot/vmlinuz-*"))
    if not vmlinuz:
        die(f"{debs[0]} has no boot/vmlinuz-*")
    shutil.copy(vmlinuz[0], kdir / "vmlinuz")
    mods = kdir / "modules"
    mods.mkdir()
    for name in MODULES + EXTRA_MODULES:
        found = list(root.glob(f"lib/modules/*/kernel/**/{name}.ko*")) + list(
            root.glob(f"usr/lib/modules/*/kernel/**/{name}.ko*")
        )
        if len(found) != 1:
            die(f"kernel module {name}: found {found} in {debs[0]}")
        src = found[0]
        dst = mods / f"{name}.ko"
        if src.suffix == ".xz":
            with open(dst, "wb") as f:
                run(["xz", "-dc", str(src)], stdout=f)
        elif src.suffix == ".zst":
            with open(dst, "wb") as f:
                run(["zstd", "-dcq", str(src)], stdout=f)
        else:
            shutil.copy(src, dst)
    # Keep only what the harness uses: the deb and the extracted tree are large.
    shutil.rmtree(root)
    for d in debs:
        d.unlink()
    (kdir / "ready").write_text(pkg + "\n")
    return kdir


# ---------------------------------------------------------------------------------------------
# Guest binaries


def cargo_build(args: list[str]) -> list[tuple[str, str]]:
    """Runs a static cargo build for the guest; returns (target name, executable) pairs."""
    env = dict(os.environ, RUSTFLAGS="-C target-feature=+crt-static", CARGO_TERM_COLOR="never")
    cmd = ["cargo", *args, "--target", TARGET, "--message-format=json-render-diagnostics"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        return []
    out = []
    for line in p.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            out.append((msg["target"]["name"], msg["executable"]))
    return out


def build_tests() -> list[tuple[str, Path]]:
    args = ["test", "--no-run"]
    for pkg, test in VM_TESTS:
        args += ["-p", pkg, "--test", test]
    log("building guest tests: cargo " + " ".join(args))
    built = dict(cargo_build(args))
    missing = [t for _, t in VM_TESTS if t not in built]
    if missing:
        die(f"cargo did not build the VM test targets {missing}")
    return [(t, Path(built[t])) for _, t in VM_TESTS]


def build_bins(bins: list[tuple[str, str, str]], release: bool = False
               ) -> list[tuple[str, Path]] | None:
    if not bins:
        return []
    out = []
    for kind, pkg, name in bins:
        # One build per binary: a --bin/--example filter applies to every -p of a command.
        args = ["build", *(["--release"] if release else []), "-p", pkg, f"--{kind}", name]
        log("building guest binary: cargo " + " ".join(args))
        built = dict(cargo_build(args))
        if name not in built:
            return None
        out.append((name, Path(built[name])))
    return out


def build_c_programs(work: Path) -> list[tuple[str, Path]] | None:
    """Builds the C ABI's static library for the guest and links each C program to it."""
    if not C_PROGRAMS:
        return []
    log("building guest C programs: cargo build -p nvme-dio-capi --lib, then cc -static")
    env = dict(os.environ, RUSTFLAGS="-C target-feature=+crt-static", CARGO_TERM_COLOR="never")
    p = subprocess.run(["cargo", "build", "-p", "nvme-dio-capi", "--lib", "--target", TARGET],
                       cwd=ROOT, env=env)
    lib = ROOT / "target" / TARGET / "debug" / "libnvme_dio_capi.a"
    if p.returncode != 0 or not lib.is_file():
        return None
    out = []
    for name, src in C_PROGRAMS:
        exe = work / name
        cmd = ["cc", "-static", "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-o", str(exe),
               str(ROOT / src), f"-I{ROOT / 'capi' / 'include'}", str(lib),
               "-lpthread", "-ldl", "-lm"]
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            return None
        out.append((name, exe))
    return out


def shared_libs(exe: Path) -> list[str]:
    """The shared libraries `exe` loads (ldd), the dynamic loader included."""
    out = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1:
            path = words[words.index("=>") + 1]
        elif words and words[0].startswith("/"):
            path = words[0]
        else:
            continue  # linux-vdso
        if path.startswith("/"):
            libs.append(path)
    return libs


def build_fio() -> list[tuple[str, Path]] | None:
    """fio and the nvme-dio engine for the guest: (guest path, host file) pairs."""
    log("building fio and its nvme-dio engine: fio/build.sh --with-fio")
    env = dict(os.environ, NVME_DIO_BUILD_LOCK="none")  # ci/vm-test runs under the lock
    p = subprocess.run([str(ROOT / "fio" / "build.sh"), "--with-fio"], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, text=True)
    if p.returncode != 0 or not p.stdout.split():
        return None
    engine, fio = Path(p.stdout.split()[-1]), ROOT / "target" / "fio" / "fio"
    files = {FIO_GUEST_BIN: fio, FIO_GUEST_ENGINE: engine}
    for exe in (fio, engine):
        for lib in shared_libs(exe):
            files.setdefault(lib, Path(lib))
    return sorted(files.items())


# ---------------------------------------------------------------------------------------------
# Initramfs


def copy_stripped(src: Path, dst: Path) -> None:
    """Copies a binary without its DWARF (the initramfs stays small; symbols stay, so
    backtraces still name functions, and panic messages carry file:line anyway)."""
    p = subprocess.run(["objcopy", "--strip-debug", str(src), str(dst)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if p.returncode != 0:  # not an ELF file (a script), or no binutils
        shutil.copy(src, dst)
    os.chmod(dst, 0o755)


def pack_initramfs(
    work: Path,
    kdir: Path,
    matrix: list[Controller],
    tests: list[tuple[str, Path]],
    bins: list[tuple[str, Path]],
    run_script: str,
    files: list[tuple[str, Path]] = (),
) -> Path:
    root = work / "initramfs"
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp", "lib/modules", "vm/tests"]:
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    applets = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for a in applets:
        if a != "busybox":
            (root / "bin" / a).symlink_to("busybox")
    os.mknod(root / "dev/console", 0o600 | 0o020000, os.makedev(5, 1))
    os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    for m in MODULES + EXTRA_MODULES:
        shutil.copy(kdir / "modules" / f"{m}.ko", root / "lib/modules")
    (root / "vm/modules").write_text("\n".join(MODULES) + "\n")
    for name, path in tests:
        copy_stripped(path, root / "vm/tests" / name)
    for name, path in bins:
        dst = root / "bin" / name
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        copy_stripped(path, dst)
    for guest, host in files:  # at absolute guest paths
        dst = root / guest.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        copy_stripped(host, dst)  # a symlinked library (the loader) becomes its file
    header = "# bdf role serial mdts lba_size namespaces(nsid:blocks,...)\n"
    (root / "matrix").write_text(header + "".join(c.matrix_line() + "\n" for c in matrix))
    (root / "vm/run").write_text(run_script)
    shutil.copy(VM_DIR / "init", root / "init")
    os.chmod(root / "init", 0o755)
    img = work / "initramfs.cpio"
    files = subprocess.run(
        ["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    with open(img, "wb") as f:
        run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=root, input=files.encode(), stdout=f)
    return img


# ---------------------------------------------------------------------------------------------
# Boot and judge


@dataclasses.dataclass
class Boot:
    console: list[str]
    exit_code: int | None  # QEMU's, None when killed on timeout
    timed_out: bool
    seconds: float


def boot(work: Path, kdir: Path, initrd: Path, matrix: list[Controller], trace: Path,
         timeout: float, console_log: Path, echo, cmdline: str = CMDLINE,
         extra_args: list[str] = ()) -> Boot:
    """`cmdline`: the guest kernel's; `extra_args`: more QEMU arguments (ci/vm-bench's
    trace events)."""
    imgdir = work / "disks"
    imgdir.mkdir(exist_ok=True)
    cmd = [*QEMU_BASE, "-kernel", str(kdir / "vmlinuz"), "-initrd", str(initrd),
           "-append", cmdline,
           "-trace", "pci_nvme_ub_*", "-trace", "pci_nvme_err_*", "-D", str(trace),
           *extra_args]
    for c in matrix:
        cmd += c.qemu_args(imgdir)
    qmp_path = work / "qmp.sock"
    qmp_path.unlink(missing_ok=True)
    cmd += ["-qmp", f"unix:{qmp_path},server=on,wait=off"]
    (work / "qemu.cmd").write_text(" ".join(cmd) + "\n")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    lines: list[str] = []
    with open(console_log, "w") as clog:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            # Drop terminal escape sequences the guest or QEMU may send.
            line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc", "", line)
            lines.append(line)
            clog.write(line + "\n")
            echo(line)
            m = QMP_REQUEST.search(line)
            if m:
                # A guest test asks the host to act on the VM (hot unplug). Answer from a
                # thread: the console must keep draining while QEMU works.
                threading.Thread(target=qmp_device_del, args=(qmp_path, matrix, m.group(1), echo),
                                 daemon=True).start()
    code = proc.wait()
    timer.cancel()
    return Boot(lines, None if timed_out.is_set() else code, timed_out.is_set(),
                time.monotonic() - start)


QMP_REQUEST = re.compile(r"VM-QMP: device_del role=(\w+)")


def qmp_device_del(sock: Path, matrix: list[Controller], role: str, echo) -> None:
    """Removes the controller with `role` through QEMU's QMP socket (device_del)."""
    target = next((c for c in matrix if c.role == role), None)
    if target is None:
        echo(f"vm: QMP request for unknown role {role}")
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock))
            f = s.makefile("rw")
            f.readline()  # greeting
            for cmd in ({"execute": "qmp_capabilities"},
                        {"execute": "device_del", "arguments": {"id": target.qemu_id}}):
                f.write(json.dumps(cmd) + "\n")
                f.flush()
                reply = f.readline()
                while '"event"' in reply:
                    reply = f.readline()
                if '"error"' in reply:
                    echo(f"vm: QMP {cmd['execute']} failed: {reply.strip()}")
                    return
        echo(f"vm: QMP device_del {target.qemu_id} ({target.bdf}) sent")
    except OSError as e:
        echo(f"vm: QMP device_del failed: {e}")


RESULT = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)\b")
STARTED = re.compile(r"^test (\S+) \.\.\. $")
EXPECT = re.compile(r"VM-EXPECT-ERR: (pci_nvme_err_\w+)")
TRACE_EVENT = re.compile(r"\b(pci_nvme_(?:ub|err)_\w+)")


def trace_violations(trace: Path, console: list[str]) -> tuple[list[str], set[str]]:
    allowed = {m.group(1) for line in console for m in EXPECT.finditer(line)}
    bad = []
    text = trace.read_text(errors="replace") if trace.exists() else ""
    for line in text.splitlines():
        m = TRACE_EVENT.search(line)
        if not m:
            continue
        ev = m.group(1)
        if ev.startswith("pci_nvme_ub_") or ev not in allowed:
            bad.append(line)
    return bad, allowed


def boot_once_more(b: Boot) -> bool:
    """True when the guest kernel crashed before /init started any test: an emulator flake
    (TCG has shown a rare int3 oops at boot while the kernel patches its own text), not a
    result of the code under test, so the harness boots once more and says so."""
    text = "\n".join(b.console)
    return ("Kernel panic" in text and not b.timed_out
            and not re.search(r"^VM-(BEGIN|FATAL)", text, re.M))


def boot_judged(work: Path, kdir: Path, initrd: Path, matrix: list[Controller], trace: Path,
                timeout: float, console_log: Path, echo, **kw) -> Boot:
    b = boot(work, kdir, initrd, matrix, trace, timeout, console_log, echo, **kw)
    if boot_once_more(b):
        first = console_log.with_name("console.crashed-boot.log")
        console_log.rename(first)
        log(f"the guest kernel crashed before any test ran ({first}); booting once more")
        b = boot(work, kdir, initrd, matrix, trace, timeout, console_log, echo, **kw)
    return b


def guest_failures(b: Boot, planned: list[str]) -> list[str]:
    """Reasons the boot itself went wrong (independent of test results)."""
    why = []
    text = "\n".join(b.console)
    if b.timed_out:
        why.append(f"timeout: the guest ran longer than {b.seconds:.0f} s and QEMU was killed "
                   "(a hang: see the last console lines above)")
    if "Kernel panic" in text:
        why.append("guest kernel panic")
    for m in re.finditer(r"^VM-FATAL: (.*)$", text, re.M):
        why.append(f"guest init: {m.group(1)}")
    for name in planned:
        if not re.search(rf"^VM-END {re.escape(name)} rc=\d+$", text, re.M):
            why.append(f"no end marker for {name} (it crashed, hung, or the guest died)")
    if not re.search(r"^VM-DONE$", text, re.M):
        why.append("no VM-DONE marker: init did not finish")
    if b.exit_code not in (0, None):
        why.append(f"QEMU exited with status {b.exit_code}")
    return why


def prepare(timeout_default: float):
    ensure_host_tools()
    kdir = ensure_kernel()
    log(f"kernel {kdir.name} (cache {kdir.relative_to(ROOT)})")
    return kdir


# ---------------------------------------------------------------------------------------------
# Modes


def mode_test(args) -> int:
    t0 = time.monotonic()
    kdir = prepare(args.timeout)
    if args.test_bin:
        tests = []
        for spec in args.test_bin:
            name, _, path = spec.partition("=")
            if not path or not Path(path).is_file():
                die(f"--test-bin {spec!r}: expected NAME=PATH of a static test binary")
            tests.append((name, Path(path)))
    else:
        tests = build_tests()
    bins = build_bins(EXTRA_BINS)
    if bins is None:
        die("an EXTRA_BINS binary did not build")
    OUT.mkdir(parents=True, exist_ok=True)
    cbins = build_c_programs(OUT)
    if cbins is None:
        die("a C program (C_PROGRAMS) did not build")
    bins += cbins
    fio_files = build_fio()
    if fio_files is None:
        die("fio or the fio engine did not build (fio/build.sh --with-fio)")
    filt = " ".join(shq(a) for a in args.filter)
    script = "".join(
        f"run_test {name} {filt}\n" for name, _ in tests
    )
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "vm-test"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    with tempfile.TemporaryDirectory(prefix="nvme-dio-vm-") as tmp:
        work = Path(tmp)
        initrd = pack_initramfs(work, kdir, TEST_MATRIX, tests, bins or [], script, fio_files)
        log(f"booting: {len(TEST_MATRIX)} controllers, initramfs {initrd.stat().st_size >> 20} MiB, "
            f"timeout {args.timeout:.0f} s")
        trace = out / "trace.log"
        b = boot_judged(work, kdir, initrd, TEST_MATRIX, trace, args.timeout, out / "console.log",
                 echo=lambda l: print(l, flush=True))
        shutil.copy(work / "qemu.cmd", out / "qemu.cmd")

    passed = failed = skipped = 0
    failed_names, skipped_names = [], []
    binary = "?"
    # A test's "test NAME ... " and its verdict can be split by a line the test wrote to the
    # console itself (a VM-QMP request): remember the name until a bare verdict line comes.
    pending = None
    for line in b.console:
        if line.startswith("VM-BEGIN "):
            binary = line.split()[1]
        m = RESULT.match(line)
        if not m:
            started = STARTED.match(line)
            if started:
                pending = started.group(1)
            elif pending and line.strip() in ("ok", "FAILED", "ignored"):
                m = re.match(r"(.*) (\S+)$", f"{pending} {line.strip()}")
                pending = None
            if not m:
                continue
        else:
            pending = None
        if m.group(2) == "ok":
            passed += 1
        elif m.group(2) == "FAILED":
            failed += 1
            failed_names.append(f"{binary}: {m.group(1)}")
        else:
            skipped += 1
            skipped_names.append(f"{binary}: {m.group(1)}")
    problems = guest_failures(b, [n for n, _ in tests])
    rcs = re.findall(r"^VM-END (\S+) rc=(\d+)$", "\n".join(b.console), re.M)
    for name, rc in rcs:
        if rc != "0" and failed == 0:
            problems.append(f"{name} exited with status {rc} but no test reported FAILED")
    bad, allowed = trace_violations(trace, b.console)
    if bad:
        problems.append(f"trace oracle: {len(bad)} QEMU NVMe event(s) not expected by any test "
                        f"(allowed: {sorted(allowed) or 'none'}):")
        problems += [f"  {l}" for l in bad[:20]]
        if len(bad) > 20:
            problems.append(f"  ... {len(bad) - 20} more in {trace}")
    if passed + failed + skipped == 0 and not problems:
        problems.append("no test ran (a filter that matched nothing?)")

    print()
    for n in failed_names:
        print(f"vm: FAILED {n}")
    for n in skipped_names:
        print(f"vm: SKIPPED {n} (ignored tests fail the VM suite)")
    for p in problems:
        print(f"vm: {p}")
    print(f"vm: console {out / 'console.log'}, trace {trace}")
    print(f"vm: boot+tests {b.seconds:.1f} s, wall {time.monotonic() - t0:.1f} s")
    print(f"vm: {passed} passed, {failed} failed, {skipped} skipped")
    return 0 if not (failed or skipped or problems) else 1


def shq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


BENCH_BIN = ("bin", "nvme-dio-cli", "nvme-dio")
# fio's t/io_uring, built statically from the same Debian fio source by fio/build.sh --with-fio.
T_IO_URING = ROOT / "target" / "fio" / "t_io_uring"


class JsonQuiet:
    """Echoes console lines, folding each top-level JSON object (a bench's --json output)
    into one line; the whole text stays in console.log. `on_line` (if given) sees every
    line first (ci/vm-bench samples the host's load on the round markers)."""

    def __init__(self, on_line=None):
        self.depth = 0
        self.lines = 0
        self.on_line = on_line

    def __call__(self, line: str) -> None:
        if self.on_line:
            self.on_line(line)
        if self.depth == 0 and line == "{":
            self.depth, self.lines = 1, 1
            return
        if self.depth:
            self.lines += 1
            if line == "}":
                self.depth = 0
                print(f"  (JSON result, {self.lines} lines, in console.log)", flush=True)
            return
        print(line, flush=True)


def qemu_pid_of(work: Path) -> int | None:
    """The QEMU process booted from `work` (its command line names that directory)."""
    key = str(work).encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and any(key in a for a in argv):
            return int(d.name)
    return None


class RoundSampler:
    """Samples the host's load when the guest prints VM-ROUND-BEGIN n / VM-ROUND-END n."""

    def __init__(self, work: Path):
        self.work = work
        self.pid: int | None = None
        self.begin: dict[int, bench.LoadSample] = {}
        self.loads: dict[int, bench.RoundLoad] = {}
        # Host wall-clock times of each step's VM-BEGIN and VM-END (--trace windows).
        self.steps: dict[str, list[float]] = {}

    def __call__(self, line: str) -> None:
        m = re.match(r"^VM-(?:BEGIN|END) (\S+)", line)
        if m:
            self.steps.setdefault(m.group(1), []).append(time.time())
        m = re.match(r"^VM-ROUND-(BEGIN|END) (\d+)$", line)
        if not m:
            return
        if self.pid is None:
            self.pid = qemu_pid_of(self.work)
        s = bench.sample_load(self.pid)
        n = int(m.group(2))
        if m.group(1) == "BEGIN":
            self.begin[n] = s
        elif n in self.begin:
            self.loads[n] = bench.round_load(self.begin[n], s)
            print(f"vm-bench: round {n}: {self.loads[n].describe()}", flush=True)


def bench_guest_files(args) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]] | int:
    """(bins, files) for the bench guest, or an exit status."""
    if args.cli:
        bins = [("nvme-dio", Path(args.cli))]
    else:
        # Optimised: a debug build measures the compiler, not the driver.
        bins = build_bins([BENCH_BIN], release=True)
    if not bins:
        print("vm-bench: the nvme-dio CLI (package nvme-dio-cli, bin nvme-dio) does not build "
              "for the guest yet; nothing to benchmark", file=sys.stderr)
        return 2
    fio_files = build_fio()
    if fio_files is None or not T_IO_URING.is_file():
        die("fio, t/io_uring or the fio engine did not build (fio/build.sh --with-fio)")
    bins.append(("t_io_uring", T_IO_URING))
    return bins, fio_files


def bench_boot(args, kdir: Path, out: Path, label: str, extra_cmdline: str, script: str,
               files, extra_qemu: list[str] = ()) -> tuple[Boot, RoundSampler]:
    bins, fio_files = files
    with tempfile.TemporaryDirectory(prefix="nvme-dio-vm-") as tmp:
        work = Path(tmp)
        initrd = pack_initramfs(work, kdir, BENCH_MATRIX, [], bins, script, fio_files)
        cmdline = " ".join(x for x in (CMDLINE, bench.BOOT_CMDLINE, extra_cmdline) if x)
        log(f"booting bench guest [{label}]: {cmdline}; timeout {args.timeout:.0f} s")
        sampler = RoundSampler(work)
        b = boot_judged(work, kdir, initrd, BENCH_MATRIX, out / f"trace-{label}.log",
                        args.timeout, out / f"console-{label}.log",
                        echo=JsonQuiet(sampler), cmdline=cmdline, extra_args=list(extra_qemu))
        shutil.copy(work / "qemu.cmd", out / f"qemu-{label}.cmd")
    return b, sampler


def mode_bench(args) -> int:
    t0 = time.monotonic()
    kdir = prepare(args.timeout)
    files = bench_guest_files(args)
    if isinstance(files, int):
        return files
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "vm-bench"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    bdf = BENCH_MATRIX[0].bdf
    if args.trace:
        import timeline  # ci/vm/timeline.py

        return timeline.run(args, kdir, out, bdf, files, bench_boot, guest_failures)
    quick = args.quick
    qds = bench.QDS_QUICK if quick else bench.QDS
    rounds = 1 if quick else args.rounds
    seconds = args.seconds if args.seconds is not None else (2 if quick else 5)
    warmup = 1 if quick else 2
    cases = bench.select(bench.CASES, args.only)
    if not cases:
        die(f"--only {args.only!r} matches no case: {[c.name for c in bench.CASES]}")
    boots = [b for b in bench.BOOTS if not args.boots or b[0] in args.boots.split(",")]
    if not boots:
        die(f"--boots {args.boots!r} names no boot: {[b[0] for b in bench.BOOTS]}")
    ratios = [(a, b) for a, b in bench.RATIOS if {a, b} <= {c.name for c in cases}]
    results, problems = [], []
    for label, extra in boots:
        script, steps = bench.guest_script(cases, qds, rounds, seconds, warmup, bdf)
        b, sampler = bench_boot(args, kdir, out, label, extra, script, files)
        problems += [f"{label}: {p}" for p in guest_failures(b, steps)]
        bad, _ = trace_violations(out / f"trace-{label}.log", b.console)
        if bad:
            problems.append(f"{label}: trace oracle: {len(bad)} unexpected QEMU NVMe event(s), "
                            f"first: {bad[0]}")
        res = bench.collect(label, "\n".join(b.console), cases, qds, rounds, warmup,
                            sampler.loads)
        problems += res.problems
        results.append(res)
    print()
    print(f"vm-bench: 4 KiB random read, null-co controller, one core, {seconds} s per figure "
          f"({warmup} s warm-up), QEMU TCG; only ratios within one boot mean anything")
    for res in results:
        print(f"vm-bench: [{res.label}] medians (IOPS / p50 us; t/io_uring measures no latency)")
        for line in bench.figures_table(res, cases, qds):
            print(f"vm-bench:   {line}")
        for line in bench.rounds_table(res, cases, qds):
            print(f"vm-bench:   {line}")
    print("vm-bench: IOPS ratios, median of the per-round ratios (range)")
    for line in bench.ratio_table(results, qds, ratios):
        print(f"vm-bench:   {line}")
    for p in problems:
        print(f"vm-bench: {p}")
    print(f"vm-bench: console/trace/qemu.cmd in {out}; wall {time.monotonic() - t0:.1f} s")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("test", help="run the VM test suite")
    t.add_argument("--timeout", type=float, default=float(os.environ.get("VM_TIMEOUT", 900)),
                   help="kill the guest after this many seconds (default 900, env VM_TIMEOUT)")
    t.add_argument("--test-bin", action="append", default=[], metavar="NAME=PATH",
                   help="run this prebuilt static test binary instead of building VM_TESTS")
    t.add_argument("filter", nargs="*", help="libtest arguments for every test binary (e.g. a name filter)")
    bn = sub.add_parser("bench", help="nvme-dio vs the kernel's io_uring paths, two boots")
    bn.add_argument("--timeout", type=float, default=float(os.environ.get("VM_TIMEOUT", 1800)),
                    help="kill a guest after this many seconds (default 1800, env VM_TIMEOUT)")
    bn.add_argument("--seconds", type=int, default=None,
                    help="measured seconds of each figure (default 5; 2 with --quick)")
    bn.add_argument("--rounds", type=int, default=3,
                    help="measured rounds per boot, after one discarded round (default 3)")
    bn.add_argument("--quick", action="store_true",
                    help="development: one round, QD 1 and 32, 2 s per figure")
    bn.add_argument("--only", metavar="WORDS",
                    help="only the cases whose name contains one of these comma-separated "
                         "words (e.g. 'nvme-dio' or 'poll'); '!word' leaves out those with it")
    bn.add_argument("--boots", metavar="LABELS",
                    help="only these boots, comma separated: viommu, passthrough")
    bn.add_argument("--trace", action="store_true",
                    help="instead: QD 1 with QEMU's nvme trace events, a per-I/O timeline")
    bn.add_argument("--cli", metavar="PATH",
                    help="use this prebuilt static nvme-dio binary instead of building it")
    args = ap.parse_args()
    os.chdir(ROOT)
    return mode_test(args) if args.mode == "test" else mode_bench(args)


if __name__ == "__main__":
    sys.exit(main())

"""The seccomp filter every container runs under: a deny list in the spirit of Docker's profile.

Capabilities alone do not stop a container from mounting things: creating a user namespace
needs no capability, and inside a fresh one a process holds them all. So the filter denies the
calls that make namespaces (`unshare`, `setns`, `clone` with a namespace flag; `clone3`
answers ENOSYS so libc falls back to `clone`), mounting, the kernel keyring, `bpf`,
`perf_event_open`, `ptrace`, module and clock calls, and the rest Docker allows only with
capabilities a container never has. 32-bit syscalls are killed (libseccomp's default for a
foreign architecture). bubblewrap installs it (`--seccomp FD`) right before the user's command.
"""

from __future__ import annotations

import errno
import functools
import tempfile

DENIED = (
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "mount_setattr", "keyctl", "add_key", "request_key", "bpf",
    "perf_event_open", "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "clock_settime",
    "clock_adjtime", "settimeofday", "adjtimex", "reboot", "swapon", "swapoff", "acct",
    "open_by_handle_at", "name_to_handle_at", "userfaultfd", "quotactl", "syslog", "iopl", "ioperm",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "lookup_dcookie", "vhangup",
    "uselib", "nfsservctl", "sethostname", "setdomainname",
)  # fmt: skip

# clone() flags that create namespaces: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
_NAMESPACE_FLAGS = (0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000)


@functools.cache
def filter_bpf() -> bytes:
    """The compiled filter (cBPF, as bubblewrap's --seccomp reads it)."""
    import pyseccomp as seccomp  # ctypes over libseccomp.so.2; imported only where sandboxes run

    deny = seccomp.ERRNO(errno.EPERM)
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED:
        try:
            f.add_rule(deny, name)
        except (RuntimeError, ValueError, OSError):
            pass  # a call this kernel's libseccomp does not know cannot be made either
    for bit in _NAMESPACE_FLAGS:
        f.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()

"""The app_profile tree: launch working-set profiles on disk (after XNU's app_profile).

Owns: `AppProfileStore`, the vmcore.workingset.ProfileStore over `VAR/vm/app_profile/`:

    VAR/vm/app_profile/            0700, owned by the user running the store
        .lock                      0600, fcntl.flock'ed by every writer (save, remove, move aside)
        <uid>/                     0700, uid in decimal
            <app>.aprof            0600, one profile per (uid, app) in the format of
                                   docs/app_profile-format.md (vmcore.workingset codec)
            <app>.aprof.corrupt-<UTC time>   a damaged profile moved aside

Rules (the MUST list of docs/app_profile-format.md, section "Store"):
  * a missing file means no profile; a damaged one (bad magic, version, checksum, truncated, over a
    limit) is reported in one line, renamed to `<app>.aprof.corrupt-<time>` and treated as absent;
    a profile recorded for another identity of the executable (inode or mtime changed) is stale:
    reported, treated as absent, and replaced by the next save;
  * saves are atomic: a temporary file in the same directory (created under the lock), written,
    fsync'ed, renamed over the old one, then the directory fsync'ed; a writer killed at any moment
    leaves the old profile (or none) and at most a temporary file, which the next writer removes;
  * two writers (threads or processes) serialise on the lock; the last one wins, nothing is mixed;
  * an application name can never escape the tree (vmcore.workingset.validate_app_name);
  * directories are 0700 and files 0600, owned by the user running the store; a tree owned by
    someone else is refused (AppProfileTreeError).

Who calls it: the wiring layer (vmcore.lab) to load a profile at task_create and to save the one the
recorder produces; `swapd profiles` (swapd.profiles_cli). Imports only the standard library and
vmcore.workingset (allowed for swapd by tests/test_architecture.py).

Caveats: readers take no lock (rename is atomic); a corrupt file is moved aside under the lock and
only if it is still the same file (inode) that failed, so a concurrent good save is never moved.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vmcore.workingset import (
    HEADER_SIZE, MAX_PROFILE_BYTES, AppIdentity, Profile, ProfileError, ProfileFormatError,
    ProfileNameError, decode_header, decode_profile, encode_profile, merge_profiles,
    validate_app_name,
)

__all__ = ["AppProfileStore", "ProfileInfo", "AppProfileTreeError", "ProfileNotFound",
           "ProfileFormatError", "ProfileNameError", "PROFILE_SUFFIX", "tree_of"]

PROFILE_SUFFIX = ".aprof"
CORRUPT_TAG = ".corrupt-"
TMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"
DIR_MODE = 0o700
FILE_MODE = 0o600

#: test seam: called with (temporary path, final path) after the temp file is written and fsync'ed,
#: before the rename (the atomicity test kills the writer there)
_before_rename: Callable[[str, str], None] | None = None


class AppProfileTreeError(ProfileError):
    """The profile tree cannot be used (owned by another user, not a directory, lock timeout)."""


class ProfileNotFound(ProfileError, LookupError):
    """No profile file for (uid, app)."""


def tree_of(var: str | os.PathLike) -> str:
    """The profile tree of a VAR directory: VAR/vm/app_profile."""
    return os.path.join(os.fspath(var), "vm", "app_profile")


@dataclass(frozen=True)
class ProfileInfo:
    """One entry of `list()`: read from the header (with `verify`, the whole file is checked too).
    `state` is "ok", "damaged" (`error` says why) or "quarantined" (a `.corrupt-<time>` file a
    load moved aside; only with `list(quarantined=True)`)."""

    uid: int
    app: str
    path: str
    size: int  # bytes on disk
    identity: AppIdentity | None = None
    pages: int = 0
    files: int = 0
    launches: int = 0
    created_ns: int = 0
    window_ns: int = 0
    page_size: int = 0
    error: str | None = None  # why the header is unreadable (then the fields above are zero)
    state: str = "ok"

    def as_dict(self) -> dict:
        d = {"app": self.app, "uid": self.uid, "path": self.path, "size": self.size,
             "pages": self.pages, "files": self.files, "launches": self.launches,
             "created_ns": self.created_ns, "window_s": self.window_ns / 1e9,
             "page_size": self.page_size, "error": self.error, "state": self.state,
             "identity": None if self.identity is None else {
                 "path": self.identity.path, "inode": self.identity.inode,
                 "mtime_ns": self.identity.mtime_ns}}
        return d


def _stderr_report(line: str) -> None:
    print(f"swapd: {line}", file=sys.stderr)


def _check_uid(uid) -> int:
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= 0xFFFFFFFE:
        raise ValueError(f"uid {uid!r} is not an integer in 0..4294967294")
    return uid


class AppProfileStore:
    """`AppProfileStore(var, report=None, lock_timeout=30.0)`: profiles under VAR/vm/app_profile.

    `report(line)` receives the one-line notices (damaged file moved aside, stale identity); the
    default prints them to stderr prefixed "swapd: ". The tree is created (0700) on first save;
    reading a missing tree means no profiles.
    """

    def __init__(self, var: str | os.PathLike, report: Callable[[str], None] | None = None,
                 lock_timeout: float = 30.0):
        self.var = os.fspath(var)
        self.root = tree_of(self.var)
        self.report = report if report is not None else _stderr_report
        self.lock_timeout = float(lock_timeout)
        self.last_notice: str | None = None

    # ---- paths ----
    def uid_dir(self, uid: int) -> str:
        return os.path.join(self.root, str(_check_uid(uid)))

    def path_for(self, uid: int, app: str) -> str:
        """The profile file of (uid, app); the name is validated so it cannot leave the tree."""
        app = validate_app_name(app)
        p = os.path.join(self.uid_dir(uid), app + PROFILE_SUFFIX)
        # belt and braces: the joined path must still be directly inside the uid directory
        if os.path.dirname(p) != self.uid_dir(uid):
            raise ProfileNameError(f"application name {app!r} would leave the profile tree")
        return p

    def _notice(self, line: str) -> None:
        self.last_notice = line
        self.report(line)

    # ---- directories and the lock ----
    def _ensure_dir(self, d: str) -> None:
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            pass
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode):
            raise AppProfileTreeError(f"profile tree path {d} exists and is not a directory")
        if st.st_uid != os.geteuid():
            raise AppProfileTreeError(
                f"profile tree directory {d} is owned by uid {st.st_uid}, not by you "
                f"(uid {os.geteuid()}); refusing to use it")
        if stat.S_IMODE(st.st_mode) != DIR_MODE:
            os.chmod(d, DIR_MODE)

    def _ensure_tree(self, uid: int | None = None) -> None:
        os.makedirs(os.path.dirname(self.root), exist_ok=True)
        self._ensure_dir(self.root)
        if uid is not None:
            self._ensure_dir(self.uid_dir(uid))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The writers' lock (fcntl.flock on VAR/vm/app_profile/.lock), with a timeout."""
        self._ensure_tree()
        path = os.path.join(self.root, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise AppProfileTreeError(
                            f"profile tree {self.root} is locked by another writer for more than "
                            f"{self.lock_timeout:g} s ({path})") from None
                    time.sleep(0.005)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ---- reading ----
    def read(self, uid: int, app: str) -> Profile:
        """The stored profile of (uid, app), whatever its identity; no side effects.
        Raises ProfileNotFound, ProfileFormatError (with the file name) or AppProfileTreeError."""
        path = self.path_for(uid, app)
        prof, _ = self._read_path(path)
        if prof.uid != uid or prof.app != app:
            raise ProfileFormatError(
                f"{path}: holds the profile of {prof.app!r} uid {prof.uid}, not {app!r} uid {uid}")
        return prof

    def _read_path(self, path: str) -> tuple[Profile, os.stat_result]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ProfileNotFound(f"no profile {path}") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ProfileFormatError(f"{path}: is a symbolic link, not a profile") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ProfileFormatError(f"{path}: not a regular file")
            if st.st_uid != os.geteuid():
                raise AppProfileTreeError(
                    f"{path}: owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); not read")
            if st.st_size > MAX_PROFILE_BYTES:
                raise ProfileFormatError(
                    f"{path}: {st.st_size} bytes exceeds the limit of {MAX_PROFILE_BYTES}")
            data = _read_all(fd, st.st_size)
        finally:
            os.close(fd)
        try:
            return decode_profile(data), st
        except ProfileFormatError as e:
            raise ProfileFormatError(f"{path}: {e}") from None

    def load(self, uid: int, app: str, identity: AppIdentity) -> Profile | None:
        """The profile to seed a launch of `identity`, or None: missing, stale (recorded for another
        identity: said so) or damaged (said so in one line, moved aside)."""
        path = self.path_for(uid, app)
        try:
            prof, st = self._read_path(path)
        except ProfileNotFound:
            return None
        except ProfileFormatError as e:
            self._move_aside(path, e)
            return None
        if prof.uid != uid or prof.app != app:
            self._move_aside(path, ProfileFormatError(
                f"{path}: holds the profile of {prof.app!r} uid {prof.uid}, not {app!r} uid {uid}"),
                expect_ino=st.st_ino)
            return None
        if prof.identity != identity:
            self._notice(
                f"profile {path} is stale: recorded for {prof.identity.describe()}, the "
                f"executable is now {identity.describe()}; ignored (a new one will replace it)")
            return None
        return prof

    def _move_aside(self, path: str, err: Exception, expect_ino: int | None = None) -> str | None:
        """Rename a damaged profile to NAME.corrupt-<time> (under the lock, same inode only)."""
        try:
            st0 = os.lstat(path) if expect_ino is None else None
        except FileNotFoundError:
            return None
        ino = expect_ino if expect_ino is not None else st0.st_ino
        with self.lock():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return None
            if st.st_ino != ino:  # replaced by a good save meanwhile
                return None
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            dest = f"{path}{CORRUPT_TAG}{stamp}"
            n = 1
            while os.path.lexists(dest):
                dest = f"{path}{CORRUPT_TAG}{stamp}.{n}"
                n += 1
            os.rename(path, dest)
            _fsync_dir(os.path.dirname(path))
        self._notice(f"damaged profile {err}; moved aside to {os.path.basename(dest)}, "
                     f"treated as absent")
        return dest

    # ---- writing ----
    def save(self, profile: Profile, *, if_absent: bool = False) -> bool:
        """Write `profile` atomically as (profile.uid, profile.app), replacing what is there.
        With if_absent=True keep an existing readable profile of the same identity (XNU's "twin
        profile" rule) and return False. Returns True when written."""
        if not isinstance(profile, Profile):
            raise ValueError(f"{profile!r} is not a Profile")
        path = self.path_for(profile.uid, profile.app)
        data = encode_profile(profile)
        self._ensure_tree(profile.uid)
        with self.lock():
            if if_absent:
                try:
                    old, _ = self._read_path(path)
                    if old.identity == profile.identity:
                        return False
                except (ProfileNotFound, ProfileFormatError):
                    pass
            self._write_locked(path, data)
        return True

    def save_merged(self, profile: Profile, min_count: int = 1) -> Profile:
        """Merge `profile` with the stored one of the same identity (if any) under the lock, keep
        pages touched in >= min_count launches, save and return the result."""
        path = self.path_for(profile.uid, profile.app)
        self._ensure_tree(profile.uid)
        with self.lock():
            try:
                old, _ = self._read_path(path)
                parts = [old, profile] if old.identity == profile.identity and \
                    old.page_size == profile.page_size else [profile]
            except ProfileNotFound:
                parts = [profile]
            except ProfileFormatError as e:
                self._notice(f"damaged profile {e}; replaced by the new launch")
                parts = [profile]
            merged = merge_profiles(parts, min_count=min_count)
            self._write_locked(path, encode_profile(merged))
        return merged

    def _write_locked(self, path: str, data: bytes) -> None:
        d = os.path.dirname(path)
        self._clean_tmp(d)
        tmp = os.path.join(d, f"{TMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}-"
                              f"{os.path.basename(path)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     FILE_MODE)
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                mv = memoryview(data)
                while mv:
                    n = os.write(fd, mv)
                    mv = mv[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            if _before_rename is not None:
                _before_rename(tmp, path)
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(d)

    def _clean_tmp(self, d: str) -> None:
        """Temporary files are only created under the lock: any found now is a dead writer's."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(d):
                if name.startswith(TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(d, name))

    # ---- listing and removal ----
    def list(self, verify: bool = False, quarantined: bool = False) -> list[ProfileInfo]:
        """Every profile file in the tree (sorted by uid, app), from its header; damaged ones are
        listed with `error` set and state "damaged" (nothing is moved). `verify`: also read and
        check each whole file (payload, checksum), as a load would. `quarantined`: also list the
        `.corrupt-<time>` files loads moved aside, state "quarantined"."""
        out: list[ProfileInfo] = []
        try:
            uids = os.listdir(self.root)
        except FileNotFoundError:
            return out
        for u in sorted((x for x in uids if x.isdigit()), key=int):
            d = os.path.join(self.root, u)
            if not os.path.isdir(d):
                continue
            for name in sorted(os.listdir(d)):
                if name.startswith("."):
                    continue
                if quarantined and CORRUPT_TAG in name and PROFILE_SUFFIX + CORRUPT_TAG in name:
                    app, stamp = name.split(PROFILE_SUFFIX + CORRUPT_TAG, 1)
                    path = os.path.join(d, name)
                    try:
                        size = os.lstat(path).st_size
                    except OSError:
                        size = 0
                    out.append(ProfileInfo(int(u), app, path, size, state="quarantined",
                                           error=f"a damaged profile moved aside at {stamp}; not used"))
                    continue
                if not name.endswith(PROFILE_SUFFIX):
                    continue
                out.append(self._info(int(u), name[:-len(PROFILE_SUFFIX)], os.path.join(d, name), verify))
        return out

    def _info(self, uid: int, app: str, path: str, verify: bool = False) -> ProfileInfo:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(HEADER_SIZE)
                h = decode_header(head)
                f.seek(HEADER_SIZE)
                strings = f.read(min(h.strings_size, 2 * (2 + 4096)))
            app_s, exe = _two_strings(strings)
            err = None
            if size != h.file_size:
                err = f"size {size} bytes, the header says {h.file_size}"
            elif verify:
                try:
                    self._read_path(path)
                except (ProfileFormatError, AppProfileTreeError, ProfileNotFound) as e:
                    err = str(e)[len(path) + 2:] if str(e).startswith(path + ": ") else str(e)
            return ProfileInfo(uid, app, path, size, AppIdentity(exe, h.exe_inode, h.exe_mtime_ns),
                               h.n_entries, h.n_files, h.launches, h.created_ns, h.window_ns,
                               h.page_size, err, "damaged" if err else "ok")
        except (ProfileFormatError, ValueError, OSError) as e:
            try:
                size = os.lstat(path).st_size
            except OSError:
                size = 0
            return ProfileInfo(uid, app, path, size, error=str(e), state="damaged")

    def remove(self, uid: int, app: str) -> bool:
        """Delete the profile of (uid, app); True if there was one."""
        path = self.path_for(uid, app)
        if not os.path.isdir(self.root):
            return False
        with self.lock():
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            _fsync_dir(os.path.dirname(path))
        return True

    def uids_with(self, app: str) -> list[int]:
        """The uids that have a profile named `app`."""
        validate_app_name(app)
        return sorted({i.uid for i in self.list() if i.app == app})


def _two_strings(b: bytes) -> tuple[str, str]:
    out = []
    pos = 0
    for _ in range(2):
        if pos + 2 > len(b):
            raise ProfileFormatError("string table is shorter than its strings")
        ln = int.from_bytes(b[pos:pos + 2], "little")
        pos += 2
        if pos + ln > len(b):
            raise ProfileFormatError("string table is shorter than its strings")
        out.append(b[pos:pos + ln].decode("utf-8", errors="replace"))
        pos += ln
    return out[0], out[1]


def _read_all(fd: int, size: int) -> bytes:
    buf = bytearray()
    while True:
        chunk = os.read(fd, max(size - len(buf), 0) + 1 if size else 1 << 20)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_PROFILE_BYTES:
            break
    return bytes(buf)


def _fsync_dir(d: str) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

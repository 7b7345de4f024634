"""A POSIX behaviour probe: run as some user against a prepared directory, print what each call did.

`python posix_probe.py DIR` prints one JSON list of [call, answer] pairs, where an answer is a value
or the errno name a call failed with. Run against a host directory and against a vnodefs mount of
an identical one, as root and as another user (setpriv), the two lists must be equal: that is the
test (tests/vnodefs/test_posix.py). DIR is prepared by `prepare(DIR)` in that test.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys


def main(base: str) -> None:
    out = []
    me = os.getuid()
    tag = "root" if me == 0 else "user"

    def do(name, fn):
        try:
            val = fn()
        except OSError as e:
            val = errno.errorcode.get(e.errno, e.errno)
        out.append([name, val])

    def owner(p):
        st = os.lstat(p)
        return [st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode)), stat.S_IFMT(st.st_mode)]

    def j(*a):
        return os.path.join(base, *a)

    def read(p):
        with open(p, "rb") as fh:
            return fh.read().decode()

    def write(p, data, mode="w"):
        with open(p, mode) as fh:
            fh.write(data)
        return len(data)

    os.umask(0o022)
    do("listdir", lambda: sorted(os.listdir(base)))
    do("read secret", lambda: read(j("secret")))
    do("read pub", lambda: read(j("pub")))
    do("write pub", lambda: write(j("pub"), "x", "a"))
    do("chmod pub", lambda: os.chmod(j("pub"), 0o777))
    do("chown pub", lambda: os.chown(j("pub"), me, -1))
    do("truncate pub", lambda: os.truncate(j("pub"), 0))
    do("truncate world", lambda: os.truncate(j("world"), 3))
    do("utime world now", lambda: os.utime(j("world")))
    do("utime world explicit", lambda: os.utime(j("world"), ns=(10**9, 2 * 10**9)))
    do("utime pub now", lambda: os.utime(j("pub")))
    do("open secret wronly", lambda: os.close(os.open(j("secret"), os.O_WRONLY)))
    # what a caller creates is the caller's
    d = j("open", tag)
    do("mkdir", lambda: os.mkdir(d, 0o777))
    do("mkdir owner", lambda: owner(d))
    do("create", lambda: write(os.path.join(d, "f"), "hello"))
    do("create owner", lambda: owner(os.path.join(d, "f")))
    do("create 0666 umask 0", lambda: (os.umask(0), os.close(os.open(os.path.join(d, "u"),
                                                                       os.O_CREAT | os.O_WRONLY, 0o666)),
                                       os.umask(0o022))[0])
    do("umask 0 owner", lambda: owner(os.path.join(d, "u")))
    do("symlink", lambda: os.symlink("f", os.path.join(d, "sl")))
    do("symlink owner", lambda: owner(os.path.join(d, "sl"))[:2])
    do("mkfifo", lambda: os.mkfifo(os.path.join(d, "fifo"), 0o640))
    do("mkfifo owner", lambda: owner(os.path.join(d, "fifo")))
    do("utime own explicit", lambda: os.utime(os.path.join(d, "f"), ns=(10**9, 3 * 10**9)))
    do("own mtime", lambda: os.stat(os.path.join(d, "f")).st_mtime_ns)
    do("chmod own", lambda: os.chmod(os.path.join(d, "f"), 0o640))
    do("chown own to a group of mine", lambda: os.chown(os.path.join(d, "f"), -1, os.getgroups()[-1]
                                                         if os.getgroups() else os.getgid()))
    do("chown own to group 0", lambda: os.chown(os.path.join(d, "f"), -1, 0))
    do("own owner", lambda: owner(os.path.join(d, "f")))
    do("chown own to root", lambda: os.chown(os.path.join(d, "f"), 0, -1))
    # set-group-ID directory: the group passes on
    g = j("sgid", tag)
    do("sgid mkdir", lambda: os.mkdir(g, 0o775))
    do("sgid mkdir owner", lambda: owner(g))
    do("sgid create", lambda: write(os.path.join(g, "f"), "g"))
    do("sgid create owner", lambda: owner(os.path.join(g, "f")))
    # sticky directory
    do("sticky unlink others", lambda: os.unlink(j("sticky", "rootf")))
    do("sticky rename others", lambda: os.rename(j("sticky", "rootf"), j("sticky", "moved")))
    do("sticky create", lambda: write(j("sticky", tag), "s"))
    do("sticky rename own", lambda: os.rename(j("sticky", tag), j("sticky", tag + "2")))
    do("sticky unlink own", lambda: os.unlink(j("sticky", tag + "2")))
    do("sticky list", lambda: sorted(os.listdir(j("sticky"))))
    # hard links: every name shows the same inode at once
    h1, h2 = os.path.join(d, "h1"), os.path.join(d, "h2")
    do("hl create", lambda: write(h1, "a\n"))
    do("hl nlink before", lambda: os.stat(h1).st_nlink)
    do("hl link", lambda: os.link(h1, h2))
    do("hl nlink h1", lambda: os.stat(h1).st_nlink)
    do("hl chmod h2", lambda: os.chmod(h2, 0o640))
    do("hl mode h1", lambda: oct(stat.S_IMODE(os.stat(h1).st_mode)))
    do("hl utime h2", lambda: os.utime(h2, ns=(5 * 10**9, 6 * 10**9)))
    do("hl mtime h1", lambda: os.stat(h1).st_mtime_ns)
    do("hl read h1", lambda: read(h1))
    do("hl write h2", lambda: write(h2, "bb\n", "a"))
    do("hl read h1 again", lambda: read(h1))
    do("hl size h1", lambda: os.stat(h1).st_size)
    do("hl unlink h2", lambda: os.unlink(h2))
    do("hl nlink after", lambda: os.stat(h1).st_nlink)
    do("rmdir nonempty", lambda: os.rmdir(d))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])

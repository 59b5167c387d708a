#!/usr/bin/env python3
"""POSIX conformance checks against a mounted directory, in the spirit of
pjdfstest: file types, modes, ownership, permissions for other users,
sticky and set-gid directories, links, renames, truncation, times, xattrs
and error codes. Run as root: `conformance.py DIR`. Prints a line per
check and the totals; exits 1 if a check fails that is not listed in
accepted-failures.txt (beside this file) with its reason."""

import errno, os, stat, sys, time, traceback

ROOT = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
U1, U2, G1, G2 = 65531, 65532, 65531, 65532
checks = []


def check(fn):
    checks.append(fn)
    return fn


def p(*parts):
    return os.path.join(ROOT, *parts)


def err(fn, *args):
    """The errno `fn(*args)` fails with, or 0."""
    try:
        fn(*args)
        return 0
    except OSError as e:
        return e.errno


def as_user(uid, gid, fn, groups=()):
    """Runs fn in a child with the given credentials; returns its result
    (an int or a short string) through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            out = repr(fn())
        except BaseException as e:  # report, never leak the child
            out = repr("exception: %r" % e)
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return eval(data.decode())


def eq(a, b, what=""):
    if a != b:
        raise AssertionError("%s: got %r, want %r" % (what, a, b))


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---- creation and types ----------------------------------------------------

@check
def mkdir_mode_and_umask():
    old = os.umask(0o022)
    try:
        os.mkdir(p("d1"), 0o777)
        eq(mode(p("d1")), 0o755, "mkdir applies umask")
        eq(stat.S_ISDIR(os.stat(p("d1")).st_mode), True)
        eq(os.stat(p("d1")).st_nlink, 2, "new dir nlink")
    finally:
        os.umask(old)


@check
def mkdir_errors():
    os.mkdir(p("d2"))
    eq(err(os.mkdir, p("d2")), errno.EEXIST, "mkdir existing")
    eq(err(os.mkdir, p("nope", "x")), errno.ENOENT, "mkdir missing parent")
    open(p("f2"), "w").close()
    eq(err(os.mkdir, p("f2", "x")), errno.ENOTDIR, "mkdir under a file")
    eq(err(os.mkdir, p("x" * 256)), errno.ENAMETOOLONG, "name of 256 bytes")
    os.mkdir(p("y" * 255))


@check
def parent_nlink_counts_subdirs():
    os.mkdir(p("nl"))
    os.mkdir(p("nl", "a"))
    os.mkdir(p("nl", "b"))
    eq(os.stat(p("nl")).st_nlink, 4)
    os.rmdir(p("nl", "a"))
    eq(os.stat(p("nl")).st_nlink, 3)


@check
def create_exclusive_and_trunc():
    fd = os.open(p("c1"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"hello")
    os.close(fd)
    eq(mode(p("c1")), 0o640 & ~os.umask(os.umask(0)), "create mode with umask")
    eq(err(os.open, p("c1"), os.O_CREAT | os.O_EXCL | os.O_WRONLY), errno.EEXIST, "O_EXCL on existing")
    fd = os.open(p("c1"), os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    eq(os.stat(p("c1")).st_size, 0, "O_TRUNC")


@check
def fifo_socket_and_devices():
    os.mkfifo(p("fifo"), 0o644)
    eq(stat.S_ISFIFO(os.lstat(p("fifo")).st_mode), True)
    os.mknod(p("chr"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.lstat(p("chr"))
    eq(stat.S_ISCHR(st.st_mode), True)
    eq((os.major(st.st_rdev), os.minor(st.st_rdev)), (1, 3), "rdev")
    os.mknod(p("blk"), 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    eq(stat.S_ISBLK(os.lstat(p("blk")).st_mode), True)
    os.mknod(p("sock"), 0o600 | stat.S_IFSOCK)
    eq(stat.S_ISSOCK(os.lstat(p("sock")).st_mode), True)


@check
def mknod_device_needs_root():
    os.mkdir(p("mk"), 0o777)
    os.chmod(p("mk"), 0o777)
    r = as_user(U1, G1, lambda: err(os.mknod, p("mk", "c"), 0o600 | stat.S_IFCHR, os.makedev(1, 3)))
    eq(r, errno.EPERM)


@check
def symlink_and_readlink():
    os.symlink("some/target", p("sl"))
    eq(os.readlink(p("sl")), "some/target")
    eq(stat.S_ISLNK(os.lstat(p("sl")).st_mode), True)
    eq(err(os.readlink, p("c1") if os.path.exists(p("c1")) else p("f2")), errno.EINVAL, "readlink of a file")
    eq(err(os.symlink, "x", p("sl")), errno.EEXIST)
    os.symlink("sl2", p("sl1"))
    os.symlink("sl1", p("sl2"))
    eq(err(os.stat, p("sl1")), errno.ELOOP, "symlink loop")


# ---- links and unlink ---------------------------------------------------------

@check
def hard_links():
    open(p("h1"), "w").write("data")
    os.link(p("h1"), p("h2"))
    eq(os.stat(p("h1")).st_nlink, 2)
    eq(os.stat(p("h1")).st_ino, os.stat(p("h2")).st_ino)
    os.unlink(p("h1"))
    eq(os.stat(p("h2")).st_nlink, 1)
    eq(open(p("h2")).read(), "data")
    eq(err(os.link, p("h2"), p("h2")), errno.EEXIST)
    eq(err(os.link, p("nope"), p("h3")), errno.ENOENT)
    os.mkdir(p("hd"))
    eq(err(os.link, p("hd"), p("hd2")), errno.EPERM, "link to a directory")


@check
def unlink_and_rmdir_errors():
    os.mkdir(p("u"))
    open(p("u", "f"), "w").close()
    eq(err(os.rmdir, p("u")), errno.ENOTEMPTY)
    eq(err(os.rmdir, p("u", "f")), errno.ENOTDIR)
    eq(err(os.unlink, p("u")), errno.EISDIR)
    eq(err(os.unlink, p("u", "nope")), errno.ENOENT)
    eq(err(os.rmdir, p("u", "nope")), errno.ENOENT)
    os.unlink(p("u", "f"))
    os.rmdir(p("u"))
    eq(os.path.exists(p("u")), False)


# ---- rename -----------------------------------------------------------------------

@check
def rename_files_and_dirs():
    open(p("r1"), "w").write("one")
    open(p("r2"), "w").write("two")
    os.rename(p("r1"), p("r2"))
    eq(open(p("r2")).read(), "one", "rename over a file")
    eq(os.path.exists(p("r1")), False)
    os.mkdir(p("rd1"))
    os.mkdir(p("rd2"))
    os.rename(p("rd1"), p("rd2"))
    eq(os.path.isdir(p("rd2")) and not os.path.exists(p("rd1")), True, "dir over empty dir")
    os.mkdir(p("rd3"))
    open(p("rd3", "x"), "w").close()
    eq(err(os.rename, p("rd2"), p("rd3")), errno.ENOTEMPTY, "dir over non-empty dir")
    eq(err(os.rename, p("r2"), p("rd3")), errno.EISDIR, "file over dir")
    eq(err(os.rename, p("rd2"), p("r2")), errno.ENOTDIR, "dir over file")
    eq(err(os.rename, p("rd3"), p("rd3", "sub")), errno.EINVAL, "dir into itself")
    eq(err(os.rename, p("nope"), p("x")), errno.ENOENT)


@check
def rename_across_dirs_updates_nlink():
    os.mkdir(p("ra"))
    os.mkdir(p("rb"))
    os.mkdir(p("ra", "child"))
    eq(os.stat(p("ra")).st_nlink, 3)
    os.rename(p("ra", "child"), p("rb", "child"))
    eq(os.stat(p("ra")).st_nlink, 2)
    eq(os.stat(p("rb")).st_nlink, 3)
    os.stat(p("rb", "child", "."))


@check
def rename_hard_links_of_one_inode_is_a_no_op():
    open(p("ln1"), "w").close()
    os.link(p("ln1"), p("ln2"))
    os.rename(p("ln1"), p("ln2"))
    eq(os.path.exists(p("ln1")) and os.path.exists(p("ln2")), True)


@check
def rename_noreplace_and_exchange():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD = -100

    def renameat2(a, b, flags):
        r = libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags)
        return 0 if r == 0 else ctypes.get_errno()

    open(p("x1"), "w").write("1")
    open(p("x2"), "w").write("2")
    eq(renameat2(p("x1"), p("x2"), 1), errno.EEXIST, "RENAME_NOREPLACE")
    eq(renameat2(p("x1"), p("x2"), 2), 0, "RENAME_EXCHANGE")
    eq((open(p("x1")).read(), open(p("x2")).read()), ("2", "1"))
    eq(renameat2(p("x1"), p("x3"), 2), errno.ENOENT, "exchange with a missing target")


# ---- modes, owners, permissions ------------------------------------------------------

@check
def chmod_by_owner_and_others():
    os.mkdir(p("pm"), 0o777)
    os.chmod(p("pm"), 0o777)
    open(p("pm", "f"), "w").close()
    os.chown(p("pm", "f"), U1, G1)
    eq(as_user(U1, G1, lambda: err(os.chmod, p("pm", "f"), 0o600)), 0, "owner chmod")
    eq(mode(p("pm", "f")), 0o600)
    eq(as_user(U2, G2, lambda: err(os.chmod, p("pm", "f"), 0o666)), errno.EPERM, "non-owner chmod")


@check
def chmod_clears_sgid_for_non_members():
    os.mkdir(p("sg"), 0o777)
    os.chmod(p("sg"), 0o777)
    open(p("sg", "f"), "w").close()
    os.chown(p("sg", "f"), U1, G2)
    as_user(U1, G1, lambda: err(os.chmod, p("sg", "f"), 0o2755))
    eq(mode(p("sg", "f")) & 0o2000, 0, "S_ISGID dropped when the owner is not in the group")


@check
def chown_rules():
    open(p("co"), "w").close()
    os.chown(p("co"), U1, G1)
    eq((os.stat(p("co")).st_uid, os.stat(p("co")).st_gid), (U1, G1))
    eq(as_user(U1, G1, lambda: err(os.chown, p("co"), U2, -1)), errno.EPERM, "give a file away")
    eq(as_user(U1, G1, lambda: err(os.chown, p("co"), -1, G2), groups=(G2,)), 0, "chgrp to own group")
    eq(as_user(U1, G1, lambda: err(os.chown, p("co"), -1, 4242)), errno.EPERM, "chgrp to a foreign group")
    os.chmod(p("co"), 0o6755)
    as_user(U1, G1, lambda: err(os.chown, p("co"), -1, G2), groups=(G2,))
    eq(mode(p("co")) & 0o6000, 0, "chown clears set-id bits")


@check
def permission_bits_for_other_users():
    os.mkdir(p("perm"), 0o755)
    open(p("perm", "ro"), "w").write("secret")
    os.chmod(p("perm", "ro"), 0o640)
    os.chown(p("perm", "ro"), 0, G1)
    eq(as_user(U2, G2, lambda: err(open, p("perm", "ro"))), errno.EACCES, "other cannot read 0640")
    eq(as_user(U2, G2, lambda: err(open, p("perm", "ro")), groups=(G1,)), 0, "supplementary group can read")
    eq(as_user(U2, G2, lambda: err(open, p("perm", "new"), "w")), errno.EACCES, "no write in 0755 dir")
    os.mkdir(p("perm", "closed"), 0o700)
    open(p("perm", "closed", "f"), "w").close()
    eq(as_user(U2, G2, lambda: err(os.stat, p("perm", "closed", "f"))), errno.EACCES, "no search permission")
    eq(as_user(U2, G2, lambda: err(os.listdir, p("perm", "closed"))), errno.EACCES, "no read permission on dir")


@check
def read_and_search_permission_on_a_directory_are_apart():
    os.mkdir(p("rx"), 0o755)
    for n in ("f", "g"):
        open(p("rx", n), "w").close()
    os.chmod(p("rx"), 0o744)  # others: read, no search
    eq(as_user(U2, G2, lambda: sorted(os.listdir(p("rx")))), ["f", "g"], "r-- lists names")
    eq(as_user(U2, G2, lambda: err(os.stat, p("rx", "f"))), errno.EACCES, "r-- cannot reach them")
    os.chmod(p("rx"), 0o711)  # others: search, no read
    eq(as_user(U2, G2, lambda: err(os.listdir, p("rx"))), errno.EACCES, "--x cannot list")
    eq(as_user(U2, G2, lambda: err(os.stat, p("rx", "g"))), 0, "--x reaches a known name")


@check
def access_syscall():
    open(p("acc"), "w").close()
    os.chmod(p("acc"), 0o604)
    eq(as_user(U2, G2, lambda: os.access(p("acc"), os.R_OK)), True)
    eq(as_user(U2, G2, lambda: os.access(p("acc"), os.W_OK)), False)


@check
def sticky_directory():
    os.mkdir(p("tmp"), 0o777)
    os.chmod(p("tmp"), 0o1777)
    as_user(U1, G1, lambda: open(p("tmp", "mine"), "w").close())
    eq(as_user(U2, G2, lambda: err(os.unlink, p("tmp", "mine"))), errno.EPERM, "unlink another's file")
    eq(as_user(U2, G2, lambda: err(os.rename, p("tmp", "mine"), p("tmp", "x"))), errno.EPERM, "rename another's file")
    eq(as_user(U1, G1, lambda: err(os.unlink, p("tmp", "mine"))), 0, "owner unlinks")


@check
def setgid_directory_inheritance():
    os.mkdir(p("sgd"), 0o777)
    os.chown(p("sgd"), 0, G2)
    os.chmod(p("sgd"), 0o2777)
    as_user(U1, G1, lambda: os.mkdir(p("sgd", "sub")))
    as_user(U1, G1, lambda: open(p("sgd", "f"), "w").close())
    eq(os.stat(p("sgd", "f")).st_gid, G2, "file takes the directory's group")
    eq(os.stat(p("sgd", "sub")).st_gid, G2, "subdir takes the directory's group")
    eq(mode(p("sgd", "sub")) & 0o2000, 0o2000, "subdir keeps set-gid")


# ---- sizes and times -----------------------------------------------------------------

@check
def truncate_grow_shrink_and_holes():
    with open(p("t"), "wb") as f:
        f.write(b"abcdef")
    os.truncate(p("t"), 3)
    eq(open(p("t"), "rb").read(), b"abc")
    os.truncate(p("t"), 10)
    eq(open(p("t"), "rb").read(), b"abc" + b"\0" * 7, "extension reads zeros")
    with open(p("t"), "r+b") as f:
        f.seek(100000)
        f.write(b"z")
    data = open(p("t"), "rb").read()
    eq((len(data), data[50000], data[-1:]), (100001, 0, b"z"), "hole reads as zeros")
    eq(err(os.truncate, p("d2") if os.path.isdir(p("d2")) else ROOT, 0), errno.EISDIR)
    open(p("tro"), "w").write("x")
    os.chmod(p("tro"), 0o644)
    eq(as_user(U2, G2, lambda: err(os.truncate, p("tro"), 0)), errno.EACCES)


@check
def times_follow_posix_rules():
    os.mkdir(p("tm"))
    before = os.stat(p("tm"))
    time.sleep(0.05)
    open(p("tm", "f"), "w").close()
    after = os.stat(p("tm"))
    eq(after.st_mtime_ns > before.st_mtime_ns and after.st_ctime_ns > before.st_ctime_ns, True, "create updates parent m/ctime")
    st = os.stat(p("tm", "f"))
    time.sleep(0.05)
    os.chmod(p("tm", "f"), 0o600)
    st2 = os.stat(p("tm", "f"))
    eq((st2.st_ctime_ns > st.st_ctime_ns, st2.st_mtime_ns == st.st_mtime_ns), (True, True), "chmod: ctime only")
    time.sleep(0.05)
    with open(p("tm", "f"), "w") as f:
        f.write("x")
    st3 = os.stat(p("tm", "f"))
    eq(st3.st_mtime_ns > st2.st_mtime_ns, True, "write updates mtime")
    os.utime(p("tm", "f"), (1000, 2000))
    st4 = os.stat(p("tm", "f"))
    eq((int(st4.st_atime), int(st4.st_mtime)), (1000, 2000), "explicit utimes")
    os.utime(p("tm", "f"), ns=(1_500_000_000_123_456_789, 1_500_000_000_987_654_321))
    st5 = os.stat(p("tm", "f"))
    eq((st5.st_atime_ns, st5.st_mtime_ns), (1_500_000_000_123_456_789, 1_500_000_000_987_654_321), "nanoseconds kept")


@check
def explicit_times_survive_the_close_that_commits_writes():
    # tar's order: write, futimens, fchown, fchmod, close.
    fd = os.open(p("tarlike"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    os.write(fd, b"x" * 5000)
    os.utime(fd, ns=(1_000_000_001, 2_000_000_002))
    os.fchown(fd, 0, 0)
    os.fchmod(fd, 0o4755)
    os.close(fd)
    time.sleep(1.1)  # past the kernel's attribute cache: ask the meta
    st = os.stat(p("tarlike"))
    eq((st.st_atime_ns, st.st_mtime_ns), (1_000_000_001, 2_000_000_002), "times set after writes")
    eq((st.st_mode & 0o7777, st.st_size), (0o4755, 5000), "mode and size")


@check
def utimes_permissions():
    open(p("ut"), "w").close()
    os.chmod(p("ut"), 0o666)
    eq(as_user(U2, G2, lambda: err(os.utime, p("ut"), None)), 0, "UTIME_NOW with write permission")
    eq(as_user(U2, G2, lambda: err(os.utime, p("ut"), (1, 1))), errno.EPERM, "explicit times need ownership")
    os.chmod(p("ut"), 0o644)
    eq(as_user(U2, G2, lambda: err(os.utime, p("ut"), None)), errno.EACCES, "UTIME_NOW without write permission")


# ---- xattrs ----------------------------------------------------------------------------

@check
def xattrs():
    open(p("xa"), "w").close()
    os.setxattr(p("xa"), "user.one", b"1")
    eq(os.getxattr(p("xa"), "user.one"), b"1")
    eq(err(os.setxattr, p("xa"), "user.one", b"2", os.XATTR_CREATE), errno.EEXIST, "XATTR_CREATE")
    eq(err(os.setxattr, p("xa"), "user.two", b"2", os.XATTR_REPLACE), errno.ENODATA, "XATTR_REPLACE")
    os.setxattr(p("xa"), "user.one", b"11", os.XATTR_REPLACE)
    os.setxattr(p("xa"), "user.two", b"")
    eq(sorted(os.listxattr(p("xa"))), ["user.one", "user.two"])
    os.removexattr(p("xa"), "user.two")
    eq(err(os.getxattr, p("xa"), "user.two"), errno.ENODATA)
    eq(err(os.removexattr, p("xa"), "user.two"), errno.ENODATA)
    os.chmod(p("xa"), 0o644)
    eq(as_user(U2, G2, lambda: err(os.setxattr, p("xa"), "user.x", b"1")), errno.EACCES, "user xattr needs write")
    eq(as_user(U2, G2, lambda: os.getxattr(p("xa"), "user.one")), b"11", "user xattr readable with read permission")
    os.setxattr(p("xa"), "trusted.t", b"t")
    eq(as_user(U2, G2, lambda: "trusted.t" in os.listxattr(p("xa"))), False, "trusted.* hidden from users")


# ---- POSIX ACLs (acl(5)), through the raw system.posix_acl_* xattrs ---------

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20


def acl_bytes(entries):
    import struct
    out = struct.pack("<I", 2)
    for tag, perm, ident in sorted(entries, key=lambda e: (e[0], e[2])):
        out += struct.pack("<HHI", tag, perm, ident if tag in (ACL_USER, ACL_GROUP) else 0xFFFFFFFF)
    return out


def acl_entries(data):
    import struct
    return sorted((t, pm, i if t in (ACL_USER, ACL_GROUP) else -1)
                  for t, pm, i in struct.iter_unpack("<HHI", data[4:]))


def readable(path):
    return err(lambda: open(path).read())


def writable(path):
    return err(lambda: open(path, "a").close())


@check
def access_acl_grants_named_users_and_tracks_chmod():
    f = p("acl-file")
    open(f, "w").close()
    os.chmod(f, 0o600)
    os.setxattr(f, "system.posix_acl_access", acl_bytes([
        (ACL_USER_OBJ, 6, 0), (ACL_USER, 4, U1), (ACL_GROUP_OBJ, 0, 0),
        (ACL_MASK, 4, 0), (ACL_OTHER, 0, 0)]))
    eq(mode(f), 0o640, "group bits show the mask")
    eq(as_user(U1, G1, lambda: readable(f)), 0, "named user reads")
    eq(as_user(U1, G1, lambda: writable(f)), errno.EACCES, "named user may not write")
    eq(as_user(U2, G2, lambda: readable(f)), errno.EACCES, "others may not read")
    got = acl_entries(os.getxattr(f, "system.posix_acl_access"))
    eq((ACL_USER, 4, U1) in got, True, "getxattr returns the named entry")
    os.chmod(f, 0o600)
    eq(as_user(U1, G1, lambda: readable(f)), errno.EACCES, "chmod g-rwx empties the mask")
    eq((ACL_MASK, 0, -1) in acl_entries(os.getxattr(f, "system.posix_acl_access")), True, "mask follows chmod")
    os.removexattr(f, "system.posix_acl_access")
    eq(err(os.getxattr, f, "system.posix_acl_access"), errno.ENODATA, "removed")
    eq(as_user(U1, G1, lambda: readable(f)), errno.EACCES, "mode bits alone again")
    bad = acl_bytes([(ACL_USER_OBJ, 6, 0), (ACL_USER, 4, U1), (ACL_GROUP_OBJ, 0, 0), (ACL_OTHER, 0, 0)])
    eq(err(os.setxattr, f, "system.posix_acl_access", bad), errno.EINVAL, "named entry needs a mask")
    eq(as_user(U2, G2, lambda: err(os.setxattr, f, "system.posix_acl_access", acl_bytes([
        (ACL_USER_OBJ, 7, 0), (ACL_GROUP_OBJ, 7, 0), (ACL_OTHER, 7, 0)]))), errno.EPERM, "only the owner sets ACLs")


@check
def default_acl_is_inherited_instead_of_the_umask():
    d = p("acl-dir")
    os.mkdir(d, 0o755)
    default = [(ACL_USER_OBJ, 7, 0), (ACL_GROUP_OBJ, 5, 0), (ACL_GROUP, 7, G2),
               (ACL_MASK, 7, 0), (ACL_OTHER, 0, 0)]
    os.setxattr(d, "system.posix_acl_default", acl_bytes(default))
    f = os.path.join(d, "f")
    old = os.umask(0o077)
    try:
        os.close(os.open(f, os.O_CREAT | os.O_WRONLY, 0o666))
        os.mkdir(os.path.join(d, "sub"), 0o777)
    finally:
        os.umask(old)
    eq(mode(f), 0o660, "umask ignored, mask from the create mode")
    inherited = acl_entries(os.getxattr(f, "system.posix_acl_access"))
    eq((ACL_GROUP, 7, G2) in inherited and (ACL_MASK, 6, -1) in inherited, True, "named group inherited, mask from the mode: %r" % inherited)
    eq(as_user(U2, 12345, lambda: writable(f), groups=(G2,)), 0, "named group member writes")
    eq(as_user(U1, G1, lambda: readable(f)), errno.EACCES, "others may not read")
    sub = os.path.join(d, "sub")
    eq(acl_entries(os.getxattr(sub, "system.posix_acl_default")), acl_entries(acl_bytes(default)), "subdirectory inherits the default ACL")
    eq(mode(sub), 0o770, "subdirectory mode from the inherited ACL (group bits show the mask)")
    open(p("plain"), "w").close()
    eq(err(os.setxattr, p("plain"), "system.posix_acl_default", acl_bytes(default)), errno.EACCES, "default ACLs only on directories")


# ---- readdir ---------------------------------------------------------------------------

@check
def readdir_lists_everything_once():
    os.mkdir(p("rdx"))
    # 256 + 2 * 1024: the mount's first page and two full pages read ahead,
    # so the last read ahead finds nothing after a full page.
    names = ["n%04d" % i for i in range(2304)]
    for n in names:
        open(p("rdx", n), "w").close()
    eq(sorted(os.listdir(p("rdx"))), names)
    for n in names[::2]:
        os.unlink(p("rdx", n))
    eq(sorted(os.listdir(p("rdx"))), names[1::2])


@check
def readdir_while_the_directory_changes():
    os.mkdir(p("rdc"))
    for i in range(300):
        open(p("rdc", "e%03d" % i), "w").close()
    seen = []
    with os.scandir(p("rdc")) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 10:
                os.unlink(p("rdc", "e299"))
                open(p("rdc", "late"), "w").close()
    eq(len(seen), len(set(seen)), "no name twice")
    for i in range(299):
        if "e%03d" % i not in seen:
            raise AssertionError("e%03d skipped" % i)


# ---- set-id bits, open descriptors, unlinked files --------------------------

def _as_other(fn):
    """fn() as U1 in a child: its result, or the errno it failed with."""
    def run():
        try:
            return fn()
        except OSError as e:
            return "errno %s" % errno.errorcode.get(e.errno, e.errno)
    return as_user(U1, G1, run)


@check
def writes_by_another_user_clear_set_id_bits():
    # Linux: a write, truncate or O_TRUNC open by a caller without
    # CAP_FSETID succeeds and clears S_ISUID, and S_ISGID when group
    # execute is set or the caller is not in the file's group; root's
    # writes keep them.
    def write(f):
        fd = os.open(f, os.O_WRONLY)
        os.write(fd, b"y")
        os.close(fd)
        return 0

    def append(f):
        fd = os.open(f, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"y")
        os.close(fd)
        return 0

    def trunc_open(f):
        os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))
        return 0

    def truncate(f):
        os.truncate(f, 10)
        return 0

    def ftruncate(f):
        fd = os.open(f, os.O_WRONLY)
        os.ftruncate(fd, 10)
        os.close(fd)
        return 0

    for how in (write, append, trunc_open, truncate, ftruncate):
        for start, gid, want in ((0o6777, 0, 0o0777), (0o6666, 0, 0o0666), (0o6666, G1, 0o2666)):
            f = p("setid-%s-%o-%d" % (how.__name__, start, gid))
            with open(f, "wb") as fh:
                fh.write(b"x" * 100)
            os.chown(f, 0, gid)
            os.chmod(f, start)
            eq(_as_other(lambda: how(f)), 0, "%s of a %o file by another user" % (how.__name__, start))
            eq(mode(f), want, "%s of a %o file by another user: mode after" % (how.__name__, start))
            time.sleep(1.1)  # past the kernel's attribute cache
            eq(mode(f), want, "%s of a %o file by another user: mode a second later" % (how.__name__, start))
    f = p("setid-root")
    with open(f, "wb") as fh:
        fh.write(b"x")
    os.chmod(f, 0o6777)
    append(f)
    truncate(f)
    eq(mode(f), 0o6777, "root's writes keep the set-id bits")


@check
def a_descriptor_keeps_the_access_granted_at_open():
    os.mkdir(p("dk"))
    os.chmod(p("dk"), 0o777)
    f = p("dk", "f")

    def run():
        fd = os.open(f, os.O_CREAT | os.O_RDWR, 0)
        os.write(fd, b"abc")
        os.ftruncate(fd, 100)
        os.posix_fallocate(fd, 0, 200)
        os.fsync(fd)
        size = os.fstat(fd).st_size
        os.close(fd)
        return size

    eq(_as_other(run), 200, "write, ftruncate and fallocate through a mode-0 file's descriptor")
    eq(mode(f), 0, "the file keeps mode 0")
    eq(_as_other(lambda: os.open(f, os.O_RDWR)), "errno EACCES", "a new open is checked")


@check
def an_unlinked_file_lives_until_its_last_close():
    f = p("unlinked")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, b"hello")
    other = os.open(f, os.O_RDONLY)
    os.unlink(f)
    eq(os.path.exists(f), False, "the name is gone")
    os.write(fd, b" world")
    os.fsync(fd)
    eq(os.fstat(fd).st_nlink, 0, "fstat of an unlinked open file")
    eq(os.pread(fd, 100, 0), b"hello world", "read through the writer")
    eq(os.pread(other, 100, 0), b"hello world", "read through another descriptor")
    os.ftruncate(fd, 5)
    eq(os.fstat(other).st_size, 5, "ftruncate of an unlinked open file")
    os.close(fd)
    time.sleep(1.1)
    eq(os.pread(other, 100, 0), b"hello", "read after the writer closed")
    os.close(other)
    # Replaced by a rename, the old file lives on too.
    g = p("renamed-over")
    with open(g, "wb") as fh:
        fh.write(b"old")
    fd = os.open(g, os.O_RDONLY)
    with open(p("renamed-new"), "wb") as fh:
        fh.write(b"new")
    os.rename(p("renamed-new"), g)
    eq(os.pread(fd, 10, 0), b"old", "a file renamed over stays readable while open")
    os.close(fd)


@check
def attributes_changed_through_another_path_are_seen_through_every_name():
    os.mkdir(p("cm"))
    os.symlink("cm", p("cm-link"))
    mode(p("cm"))  # cached by name
    os.chmod(p("cm-link"), 0o700)
    eq(mode(p("cm")), 0o700, "chmod through a symlink, at once")
    os.chown(p("cm-link"), U2, G2)
    time.sleep(1.1)
    eq(mode(p("cm")), 0o700, "chmod through a symlink, a second later")
    eq((os.stat(p("cm")).st_uid, os.stat(p("cm")).st_gid), (U2, G2), "chown through a symlink")
    with open(p("cm-file"), "wb") as fh:
        fh.write(b"x")
    os.link(p("cm-file"), p("cm-file2"))
    os.chmod(p("cm-file2"), 0o600)
    time.sleep(1.1)
    eq(mode(p("cm-file")), 0o600, "chmod through a second hard link")



def main():
    if os.geteuid() != 0:
        print("conformance.py must run as root")
        return 2
    accepted = {}
    path = os.path.join(HERE, "accepted-failures.txt")
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                accepted[name] = reason
    passed, failed, unexpected = 0, 0, []
    for fn in checks:
        try:
            fn()
            passed += 1
            print("PASS", fn.__name__)
        except Exception as e:
            failed += 1
            note = " (accepted: %s)" % accepted[fn.__name__] if fn.__name__ in accepted else ""
            print("FAIL %s: %s%s" % (fn.__name__, e, note))
            if fn.__name__ not in accepted:
                unexpected.append(fn.__name__)
                traceback.print_exc(limit=2)
    print("conformance: %d passed, %d failed (%d accepted), %d checks" % (passed, failed, failed - len(unexpected), len(checks)))
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())

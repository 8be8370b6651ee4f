"""Folders and files only the server's user can reach: where ric writes traces, logs and HAProxy's config,
and the check of a file a client named (a trace file, a shared memory region).
No Ray here.

A folder in a shared place (``/tmp``) could be made first by another local user, who could then swap a file
the server is about to write for a link to any file the server's user may write. So every such folder is
created by the server with mode 0700, or refused when it already exists as anything else (a link, another
user's, readable or writable by others), and files in it are opened without following links.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafeFolder(ValueError):
    """A folder the server may not write in; its message names the folder and why."""

    def __init__(self, folder: str, why: str):
        super().__init__(f"{folder} {why}")
        self.folder, self.why = folder, why


def private_folder(folder: str | os.PathLike) -> Path:
    """``folder``, created with mode 0700 if missing (parents as needed); UnsafeFolder when it exists as a
    link, not a folder, another user's, or open to others."""
    path = Path(folder)
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as error:
        raise UnsafeFolder(str(path), f"cannot be created ({error.strerror})") from None
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeFolder(str(path), "is a symbolic link")
    _check_folder(str(path), info)
    return path


def _check_folder(folder: str, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFolder(folder, "is not a folder")
    if info.st_uid != os.geteuid():
        raise UnsafeFolder(folder, f"belongs to another user (uid {info.st_uid}); remove it or choose another")
    if info.st_mode & 0o077:
        raise UnsafeFolder(folder, f"is open to other users (mode {stat.S_IMODE(info.st_mode):o}; it must be "
                                   "0700): remove it (files others put there stay) or choose another")


def not_own_file(info: os.stat_result) -> str | None:
    """Why an opened file may not be written or mapped for a client, or None: only a regular file of the
    server's own user with no other name, since the server reads and writes it as its user. Anything else
    (another user's file, a second name of a file that lives elsewhere, a folder, a device or FIFO) would
    give whoever named it access they have not got."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != os.geteuid():
        return "not owned by the server's user"
    if info.st_nlink != 1:
        return "a file with more than one name"
    return None


def append_private(folder: str | os.PathLike, name: str, text: str) -> None:
    """Append ``text`` to the file ``name`` in ``folder`` (created 0600). The folder is opened without
    following a link and checked as ``private_folder`` checks it, and the file is opened relative to that
    open folder, so neither can be swapped for a link between the check and the write; the file must be a
    regular file of this user with no other name (not one planted, or linked in, by someone else)."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise UnsafeFolder(str(folder), f"cannot be opened as a folder ({error.strerror})") from None
    try:
        _check_folder(str(folder), os.fstat(folder_fd))
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o600, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)
    try:
        refused = not_own_file(os.fstat(fd))
        if refused:
            raise OSError(f"{name} in {folder}: {refused}")
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)

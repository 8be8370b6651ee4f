"""Folders and files only the server's user can reach: where ric writes traces, logs and HAProxy's config.
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
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFolder(str(path), "is not a folder")
    if info.st_uid != os.geteuid():
        raise UnsafeFolder(str(path), f"belongs to another user (uid {info.st_uid}); remove it or choose another")
    if info.st_mode & 0o077:
        raise UnsafeFolder(str(path), f"is open to other users (mode {stat.S_IMODE(info.st_mode):o}; "
                                      "it must be 0700): remove it or chmod 700 it")
    return path


def append_private(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to the file at ``path`` (created 0600), never through a link, only to a regular file."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)

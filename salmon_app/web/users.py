"""The console's administrators: a file of ``name:argon2-hash`` lines, mode 0600, never plain passwords.

``WebUsersFile`` names it (empty: ``web-users`` beside the configuration file). ``add-user``
writes it atomically (a temporary file renamed into place) so the console, which reads it at
each login, never sees half a file; run as root, it gives the file to the owner of its folder. Hashes are argon2id through argon2-cffi (its defaults
follow RFC 9106); ``verify`` spends the same time on an unknown name as on a wrong password,
so the answer does not tell which names exist.
"""
import os
import re

import argon2

from salmon_app import private_file

NAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_HASHER = argon2.PasswordHasher()
_DUMMY = _HASHER.hash("no such user: spend the time of a real check")


class UsersError(Exception):
    """A users-file problem to report as one line."""


def path_of(config):
    if config.WebUsersFile:
        return config.WebUsersFile
    folder = os.path.dirname(os.path.abspath(config.path)) if config.path else "config"
    return os.path.join(folder, "web-users")


def load(path):
    """{name: hash}; {} when the file does not exist yet."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsersError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    users = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, hashed = line.partition(":")
        if not colon or not NAME_RE.match(name) or not hashed.startswith("$argon2"):
            raise UsersError("%s:%d: expected name:argon2-hash (write it with vxgate web add-user)" % (path, number))
        users[name] = hashed
    return users


def save(path, users):
    def fill(handle):
        handle.write("# vxgate web console administrators (vxgate web add-user NAME)\n")
        handle.writelines("%s:%s\n" % item for item in sorted(users.items()))
    try:
        # root adds users for the service: the file belongs to whoever owns its folder
        # (vxgate in /var/lib/vxgate), or the console could not read it
        private_file.replace(path, fill, prefix=".web-users-", text=True, owner_of_folder=os.geteuid() == 0)
    except OSError as exc:
        raise UsersError("cannot write %s: %s" % (path, exc.strerror or exc)) from None


def set_password(path, name, password):
    """Add ``name`` or change its password; returns True when the user is new."""
    if not NAME_RE.match(name):
        raise UsersError("bad user name %r: use 1-64 letters, digits, '.', '_', '@' or '-'" % name)
    if len(password) < 8:
        raise UsersError("the password is too short: use at least 8 characters")
    users = load(path)
    new = name not in users
    users[name] = _HASHER.hash(password)
    save(path, users)
    return new


def remove(path, name):
    users = load(path)
    if name not in users:
        raise UsersError("no user %r in %s" % (name, path))
    del users[name]
    save(path, users)


def verify(path, name, password):
    """True when ``password`` is ``name``'s; the same work whether or not the name exists."""
    hashed = load(path).get(name)
    try:
        return _HASHER.verify(hashed or _DUMMY, password) and hashed is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False

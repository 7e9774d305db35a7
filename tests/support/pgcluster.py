"""A private PostgreSQL cluster for the tests: Debian's server binaries, initdb + pg_ctl in a
temporary directory on a free loopback port, no systemd, removed afterwards.

As root (CI), the server runs as the ``postgres`` system user, since PostgreSQL refuses root.
Each test gets its own database, copied from a template that already carries vxgate's schema
(``vxgate db upgrade`` ran on it once), so a test starts in milliseconds. The role ``vxgate``
logs in over TCP with a password, as a real node would.
"""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid

PASSWORD = "pg-Secret-4711"
REQUIRED = "VXGATE_REQUIRE_POSTGRES"      # .ci/run sets it: CI must run these tests, not skip them


def _bin_dir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(os.path.realpath(initdb)) if initdb else None


def skip_reason():
    """None when a cluster can be started here, else why not."""
    if _bin_dir() is None:
        return "PostgreSQL server not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no 'postgres' user to run the server as"
    return None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    def __init__(self):
        self.bin = _bin_dir()
        self.root = tempfile.mkdtemp(prefix="vxgate-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        os.chmod(self.root, 0o755)
        self.template = None

    def _run(self, *argv, check=True, timeout=120):
        command = [os.path.join(self.bin, argv[0])] + list(argv[1:])
        if self.user:
            command = ["runuser", "-u", "postgres", "--"] + command
        return subprocess.run(command, check=check, timeout=timeout, capture_output=True, text=True,
                              cwd=self.root)

    def init(self):
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as handle:
            handle.write(PASSWORD + "\n")
        if self.user:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", self.data, "-U", "postgres", "--pwfile", pwfile, "-A", "scram-sha-256",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n"
                       "max_connections = 300\nfsync = on\nshared_buffers = 64MB\n" % (self.port, self.root))
        return self

    def start(self):
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "log"), "-w", "-t", "60", "start")
        return self

    def stop(self, mode="fast"):
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop", check=False)

    def destroy(self):
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname, user="postgres"):
        return "postgresql://%s:%s@127.0.0.1:%d/%s" % (user, PASSWORD, self.port, dbname)

    def sql(self, statement, dbname="postgres"):
        import psycopg
        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else None

    def create_template(self):
        """The template database with vxgate's schema, made once per cluster."""
        if self.template is None:
            from salmon_app.storage import migrations, models
            self.sql("CREATE DATABASE vxgate_template")
            database = models.engine.connect(self.url("vxgate_template"))
            previous = models.db.obj
            models.db.initialize(database)
            try:
                migrations.upgrade(database, by="tests")
            finally:
                database.close()
                database.close_all()       # a pooled connection would keep the template busy
                models.db.initialize(previous)
            self.template = "vxgate_template"
        return self.template

    def new_database(self, schema=True):
        """The URL of a fresh database (with vxgate's schema unless ``schema`` is False)."""
        name = "t_" + uuid.uuid4().hex[:12]
        if schema:
            self.sql('CREATE DATABASE "%s" TEMPLATE "%s"' % (name, self.create_template()))
        else:
            self.sql('CREATE DATABASE "%s"' % name)
        return self.url(name)

"""nginx, Apache and lighttpd on loopback, each running a configuration fragment as a user would include it.

``python -m gateway rules`` prints what goes inside a server's configuration; these wrap it in the least a server
needs to start privately: its own pid file, logs, temp and lock files under one scratch directory, a listener on
127.0.0.1, and for Apache the modules loaded by path. The system servers and their configuration are never
touched; the stock nginx parameter files are linked in as shipped.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from devstack.nginx import NGINX_PARAMS_DIR, find_nginx
from devstack.processes import ListeningProcess, find_binary

APACHE_MODULES = Path("/usr/lib/apache2/modules")


class RulesNginx(ListeningProcess):
    """nginx whose ``http { }`` block is ``rules`` (which brings its own ``server`` listening on ``port``)."""

    what = "nginx"
    stop_signal = signal.SIGQUIT
    start_timeout = 15.0

    def __init__(self, scratch: Path, port: int, rules: str) -> None:
        super().__init__(scratch, port)
        self.rules = rules

    def prepare(self) -> None:
        temp = self.scratch / "temp"
        temp.mkdir(exist_ok=True)
        for params in ("fastcgi_params", "uwsgi_params"):
            link = self.scratch / params
            if not link.exists():
                link.symlink_to(NGINX_PARAMS_DIR / params)
        (self.scratch / "rules.conf").write_text(self.rules)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temps = "".join(
            f"    {kind}_temp_path {temp}/{kind};\n" for kind in ("client_body", "fastcgi", "uwsgi", "proxy", "scgi")
        )
        (self.scratch / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.scratch}/nginx.pid;\n"
            f"error_log {self.scratch}/error.log warn;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n    access_log {self.scratch}/access.log;\n{temps}    include {self.scratch}/rules.conf;\n}}\n"
        )

    def command(self) -> list[str]:
        conf = self.scratch / "nginx.conf"
        return [find_nginx(), "-p", str(self.scratch), "-c", str(conf), "-e", str(self.scratch / "error.log")]


class Apache(ListeningProcess):
    """Apache httpd (event MPM) with ``rules`` (a ``<VirtualHost>`` and its ``Listen``) included."""

    what = "apache"
    stop_signal = signal.SIGTERM
    start_timeout = 20.0

    def __init__(self, scratch: Path, port: int, rules: str, modules: tuple[str, ...]) -> None:
        super().__init__(scratch, port)
        self.rules = rules
        self.modules = ("mpm_event", "authz_core", "alias", "mime", "proxy", *modules)

    def prepare(self) -> None:
        (self.scratch / "rules.conf").write_text(self.rules)
        loads = "".join(f"LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so\n" for name in self.modules)
        # As root, Apache's children switch to User/Group (it refuses to serve as root).
        user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
        (self.scratch / "httpd.conf").write_text(
            f'ServerRoot "{self.scratch}"\nPidFile "{self.scratch}/httpd.pid"\nDefaultRuntimeDir "{self.scratch}"\n'
            f'ErrorLog "{self.scratch}/error.log"\nLogLevel warn\nMutex file:{self.scratch} default\n{loads}{user}'
            "ServerName localhost\nTypesConfig /etc/mime.types\n"
            f'Include "{self.scratch}/rules.conf"\n'
        )

    def command(self) -> list[str]:
        binary = find_binary("apache2", "apache2")
        return [binary, "-f", str(self.scratch / "httpd.conf"), "-DFOREGROUND"]


class Lighttpd(ListeningProcess):
    """lighttpd in the foreground, its configuration ``rules`` (or an ``include_shell`` line that prints them)."""

    what = "lighttpd"
    stop_signal = signal.SIGTERM
    start_timeout = 20.0

    def __init__(self, scratch: Path, port: int, rules: str) -> None:
        super().__init__(scratch, port)
        self.rules = rules

    def prepare(self) -> None:
        docroot = self.scratch / "docroot"
        docroot.mkdir(exist_ok=True)
        (self.scratch / "lighttpd.conf").write_text(
            f'server.document-root = "{docroot}"\nserver.errorlog = "{self.scratch}/error.log"\n'
            'mimetype.assign = ( ".txt" => "text/plain" )\n'
            f"{self.rules}"
        )

    def command(self) -> list[str]:
        return [find_binary("lighttpd", "lighttpd"), "-D", "-f", str(self.scratch / "lighttpd.conf")]

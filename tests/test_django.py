"""A stock Django project, made and deployed as the README's "Deploying Django" says, served through the real nginx
over FastCGI (at ``/``) and uwsgi (mounted at ``/uwsgi``, told with ``--script-name``): the admin's login with its
CSRF token, a form POST that writes to the database, and static files that nginx serves from ``STATIC_ROOT``.

Django runs in the gateway's workers only; the test drives it over HTTP and through ``manage.py``, as a user would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import pytest

from devstack.nginx import Nginx
from devstack.ports import free_port
from devstack.processes import GatewayProcess
from tests.http import Reply, request

pytestmark = pytest.mark.nginx

#: A user's shell: the project's directory is found through --chdir, never through a PYTHONPATH of ours.
USER_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
PASSWORD = "correct horse battery staple"


def _manage(project: Path, *args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env={**USER_ENV, **(env or {})},
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``django-admin startproject mysite``, its settings told the host and STATIC_ROOT, migrated, its static files
    collected and an admin user created."""
    root = tmp_path_factory.mktemp("django")
    command = [sys.executable, "-m", "django", "startproject", "mysite"]
    subprocess.run(command, cwd=root, env=USER_ENV, check=True, capture_output=True, timeout=60)
    project = root / "mysite"
    settings = project / "mysite" / "settings.py"
    static_root = project / "static"
    settings.write_text(
        settings.read_text()
        + f'\nALLOWED_HOSTS = ["127.0.0.1"]\nSTATIC_URL = "/static/"\nSTATIC_ROOT = {str(static_root)!r}\n'
    )
    _manage(project, "migrate", "--noinput")
    _manage(project, "collectstatic", "--noinput")
    _manage(
        project,
        *("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com"),
        env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD},
    )
    return project


@dataclass
class Site:
    url: str
    access_log: Path
    gateway: GatewayProcess


@pytest.fixture(scope="module")
def site(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    scratch = tmp_path_factory.mktemp("django-run")
    fcgi, uwsgi, port = free_port(), free_port(), free_port()
    access_log = scratch / "access.log"
    args = [
        *("--fcgi", f"127.0.0.1:{fcgi}", "--uwsgi", f"127.0.0.1:{uwsgi}", "--workers", "2"),
        *("--chdir", str(project), "--script-name", "/uwsgi", "--sessions", "off"),
        *("--access-log", str(access_log), "mysite.wsgi:application"),
    ]
    # Started from elsewhere: --chdir alone says where the project is.
    gateway = GatewayProcess(scratch / "gateway-run", args, env=USER_ENV, cwd=scratch).start()
    static = f"location /static/ {{ alias {project / 'static'}/; }}"
    nginx = Nginx(scratch / "nginx", port, f"127.0.0.1:{fcgi}", f"127.0.0.1:{uwsgi}", extra=static)
    try:
        nginx.start()
        yield Site(nginx.url, access_log, gateway)
    finally:
        nginx.stop()
        gateway.stop()


@dataclass
class Browser:
    """Keeps the cookies Django sets, as a browser does (one path, one host: enough here)."""

    url: str
    cookies: dict[str, str] = field(default_factory=dict)

    def go(self, method: str, path: str, form: dict[str, str] | None = None) -> Reply:
        headers = [("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))] if self.cookies else []
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
        reply = request(self.url, method, path, body, headers)
        for line in reply.all("Set-Cookie"):
            for name, morsel in SimpleCookie(line).items():
                self.cookies[name] = morsel.value
        return reply

    def csrf_token(self, path: str) -> str:
        page = self.go("GET", path)
        assert page.status == 200, (path, page.status, page.body[:300])
        match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body)
        assert match is not None, page.body[:300]
        return match.group(1).decode()


@pytest.mark.parametrize("mount", ["", "/uwsgi"], ids=["fastcgi", "uwsgi"])
def test_admin_login_with_csrf_and_a_form_post(site: Site, mount: str) -> None:
    browser = Browser(site.url)
    admin = f"{mount}/admin/"
    token = browser.csrf_token(f"{admin}login/")
    assert "csrftoken" in browser.cookies
    login = {"csrfmiddlewaretoken": token, "username": "admin", "password": PASSWORD, "next": admin}
    reply = browser.go("POST", f"{admin}login/?next={admin}", login)
    assert reply.status == 302 and reply.header("Location") == admin, (reply.status, reply.body[:300])
    assert "sessionid" in browser.cookies  # Django's own sessions: the gateway's are off
    assert b"Site administration" in browser.go("GET", admin).body

    group = f"editors-{mount.strip('/') or 'fcgi'}"
    token = browser.csrf_token(f"{admin}auth/group/add/")
    reply = browser.go("POST", f"{admin}auth/group/add/", {"csrfmiddlewaretoken": token, "name": group})
    assert reply.status == 302 and reply.header("Location") == f"{admin}auth/group/", reply.body[:300]
    assert group.encode() in browser.go("GET", f"{admin}auth/group/").body

    refused = Browser(site.url).go("POST", f"{admin}login/", {"username": "admin", "password": PASSWORD})
    assert refused.status == 403  # no CSRF token: Django refuses, through the gateway as behind any server


def test_static_files_come_from_nginx_not_from_a_worker(site: Site, project: Path) -> None:
    reply = request(site.url, "GET", "/static/admin/css/base.css")
    assert reply.status == 200
    assert reply.body == (project / "static" / "admin" / "css" / "base.css").read_bytes()
    request(site.url, "GET", "/admin/login/")  # one line the gateway does log, so the log exists and is read
    assert "/static/" not in site.access_log.read_text()

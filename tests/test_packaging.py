"""The wheel is what the deploy image runs. No Docker engine runs on these machines, so the image
is tested here by what it packages: deploy/Dockerfile's build stage copies a set of folders and
builds the project from them; hatchling silently leaves out a package whose folder was not copied,
and the image then fails only when a role imports it (issue 14: the web role).

These tests stage the image's build context from the Dockerfile's own COPY lines (through
.dockerignore), build the wheel from it, install that wheel into a fresh virtualenv outside the
tree with the locked dependencies, and serve the web role from it.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import requests

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
NOT_SHIPPED = {"tests"}  # top-level packages the wheel leaves out on purpose
COMMAND_TIMEOUT = 120  # seconds for one build or install step: a hang fails instead of blocking
SERVE_DEADLINE = 45.0  # seconds for `camvoice serve` to answer /readyz
SECRET_KEY = "packaging-test-secret-" + "x" * 32
OWNER, PASSWORD = "owner@example.com", "packaging-test-password"


# --- the Dockerfile's build stage -------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    """One COPY instruction of the build stage, sources relative to the build context."""

    sources: tuple[str, ...]
    dest: str


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    kept = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    logical = "\n".join(kept).replace("\\\n", " ")
    found = []
    for line in filter(str.strip, logical.splitlines()):
        keyword, _, rest = line.strip().partition(" ")
        found.append((keyword.upper(), rest.strip()))
    return found


def copy_arguments(rest: str) -> list[str]:
    """COPY's arguments in either form (shell words or a JSON array), flags included."""
    return list(json.loads(rest)) if rest.startswith("[") else shlex.split(rest)


def build_stage_copies(text: str) -> list[Copy]:
    """The COPY instructions of the stage named `build`: what the image builds the wheel from."""
    copies: list[Copy] = []
    in_build = False
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            in_build = re.search(r"\bAS\s+build\s*$", rest, re.I) is not None
        elif keyword == "COPY" and in_build:
            args = copy_arguments(rest)
            if any(a.startswith("--from") for a in args):
                continue
            words = [a for a in args if not a.startswith("--")]
            copies.append(Copy(tuple(words[:-1]), words[-1]))
    assert copies, "deploy/Dockerfile has no COPY in a stage named `build`"
    return copies


def copied_top_level() -> set[str]:
    """The first path component of every source the build stage copies."""
    copies = build_stage_copies(DOCKERFILE.read_text())
    return {PurePosixPath(src).parts[0] for copy in copies for src in copy.sources}


# --- what the wheel ships ---------------------------------------------------------------------


def pyproject() -> dict[str, Any]:
    """pyproject.toml, parsed."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def shipped_packages() -> set[str]:
    """The wheel's top-level packages, as the hatch build configuration lists them."""
    return set(pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])


def tree_packages() -> set[str]:
    """Top-level Python packages in the repository, except the ones kept out on purpose."""
    return {init.parent.name for init in ROOT.glob("*/__init__.py")} - NOT_SHIPPED


def tracked_files(packages: set[str]) -> set[str]:
    """Files git tracks under the shipped packages: code, templates, static files, migrations,
    interaction models. Each must be inside the wheel."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--", *sorted(packages)],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=COMMAND_TIMEOUT,
    ).stdout.decode()
    return {name for name in out.split("\0") if name and (ROOT / name).is_file()}


def wheel_files(wheel: Path) -> set[str]:
    """The wheel's files, without its own metadata folder."""
    with zipfile.ZipFile(wheel) as archive:
        return {n for n in archive.namelist() if ".dist-info/" not in n}


# --- the build context, through .dockerignore -------------------------------------------------


def dockerignore_rules() -> list[tuple[re.Pattern[str], bool]]:
    """(pattern, is_exception) for each .dockerignore line, in order: the last match wins."""
    path = ROOT / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    rules = []
    for line in (raw.strip() for raw in lines):
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((glob_regex(line.lstrip("!").strip("/")), negated))
    return rules


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A Docker ignore pattern as a regex: `**/` any folders (or none), `*` within one name."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern)
    table = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    regex = "".join(
        table.get(p) or (p if p.startswith("[") and p.endswith("]") else re.escape(p))
        for p in parts
    )
    return re.compile(regex)


def ignored(relative: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Whether Docker leaves this path out of the context (a matched folder takes its content)."""
    parts = PurePosixPath(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for regex, negated in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def stage_build_context(stage: Path) -> Path:
    """Copy what the build stage's COPY lines copy (relative to its WORKDIR) into `stage`."""
    rules = dockerignore_rules()
    for copy in build_stage_copies(DOCKERFILE.read_text()):
        assert not copy.dest.startswith("/"), f"unsupported absolute COPY destination {copy.dest}"
        for source in copy.sources:
            assert not ignored(source, rules), f"COPY {source}: .dockerignore excludes it"
            origin = ROOT / source
            assert origin.exists(), f"COPY {source}: no such path in the repository"
            into_folder = copy.dest.endswith("/") or len(copy.sources) > 1
            target = stage / copy.dest / (origin.name if into_folder else "")
            if origin.is_dir():
                shutil.copytree(
                    origin, target, symlinks=True, ignore=context_filter(rules), dirs_exist_ok=True
                )
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    return stage


def context_filter(
    rules: list[tuple[re.Pattern[str], bool]],
) -> Callable[[str, list[str]], set[str]]:
    """A copytree `ignore` that applies .dockerignore relative to the repository root."""

    def skip(folder: str, names: list[str]) -> set[str]:
        base = Path(folder).relative_to(ROOT).as_posix()
        return {n for n in names if ignored(f"{base}/{n}", rules)}

    return skip


# --- uv, the wheel and a virtualenv outside the tree ------------------------------------------


def uv_binary() -> str:
    """The project's pinned uv (`make install` puts it in .uv/); a missing uv fails, never skips."""
    local = ROOT / ".uv" / "bin" / "uv"
    found = str(local) if local.exists() else shutil.which("uv")
    if found is None:
        pytest.fail("uv not found: run `make install` (it installs uv into .uv/)")
    return found


def outside_env(**extra: str) -> dict[str, str]:
    """This process's environment minus anything that points into the tree or configures
    camvoice: the installed copy must stand on its own. Bytecode is written (the venv is ours):
    each later command then starts in seconds instead of compiling everything again."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    dropped += ("PYTHONDONTWRITEBYTECODE",)
    env = {
        k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("CAMVOICE_")
    }
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return {**env, **extra}


def run(args: list[str], cwd: Path, env: dict[str, str], stdin: str | None = None) -> str:
    """Run a command to completion, failing the test with its output if it fails."""
    result = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"{shlex.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


def build_wheel(source: Path, out: Path) -> Path:
    """`uv build --wheel` of a project folder; the one wheel it wrote."""
    run([uv_binary(), "build", "--wheel", "--out-dir", str(out), str(source)], out, outside_env())
    (wheel,) = out.glob("*.whl")
    return wheel


@dataclass(frozen=True)
class Installed:
    """A virtualenv outside the tree with the image's wheel and the locked dependencies."""

    venv: Path
    home: Path  # the working directory for every command: outside the tree, empty at first

    @property
    def bin(self) -> Path:
        """Where the console scripts are: what an operator's PATH would name."""
        return self.venv / "bin"

    def env(self) -> dict[str, str]:
        """Only what an operator would give: a data dir (a fresh SQLite file) and a secret key."""
        return outside_env(
            PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            CAMVOICE_DATA_DIR=str(self.home / "data"),
            CAMVOICE_SECRET_KEY=SECRET_KEY,
        )

    def camvoice(self, *args: str, stdin: str | None = None) -> str:
        """Run the installed console script from outside the tree."""
        return run([str(self.bin / "camvoice"), *args], self.home, self.env(), stdin)


@pytest.fixture(scope="module")
def image_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's build context after its build stage's COPY lines: the folder it builds in."""
    return stage_build_context(tmp_path_factory.mktemp("image-context"))


@pytest.fixture(scope="module")
def image_wheel(image_context: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the image builds: from the Dockerfile's build context, not the whole tree."""
    return build_wheel(image_context, tmp_path_factory.mktemp("image-wheel"))


@pytest.fixture(scope="module")
def installed(
    image_context: Path, image_wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> Installed:
    """`python -m venv` outside the tree, then the locked set (as the image's `uv sync --frozen
    --no-dev` installs it: the lock's override drops oscrypto, which a fresh resolve of the
    wheel's requirements would bring back) and the wheel, with nothing else resolved."""
    base = tmp_path_factory.mktemp("outside")
    assert not base.resolve().is_relative_to(ROOT)
    venv, home, locked = base / "venv", base / "home", base / "locked.txt"
    home.mkdir()
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, outside_env())
    export = [uv_binary(), "export", "--project", str(image_context), "--frozen", "--no-dev"]
    run([*export, "--no-emit-project", "-q", "-o", str(locked)], base, outside_env())
    install = [uv_binary(), "pip", "install", "--python", str(venv / "bin" / "python")]
    run([*install, "--no-deps", "-r", str(locked), str(image_wheel)], base, outside_env())
    return Installed(venv, home)


# --- a server from the installed wheel --------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A `camvoice serve` process and where it writes."""

    process: subprocess.Popen[bytes]
    log: Path


def start_server(installed: Installed, port: int) -> Server:
    """`camvoice serve` in its own process group, so stopping it stops its gunicorn workers."""
    log = installed.home / f"serve-{port}.log"
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**installed.env(), "CAMVOICE_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(installed.bin / "camvoice"), *args],
            cwd=installed.home,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(process, log)


def stop_server(server: Server) -> None:
    """SIGTERM to the group (gunicorn drains), SIGKILL if it has not gone within 15 s."""
    if server.process.poll() is not None:
        return
    os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(5)


def wait_ready(server: Server, url: str) -> None:
    """Poll /readyz until 200, failing with the server's log if it exits or the deadline passes."""
    deadline = time.monotonic() + SERVE_DEADLINE
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"camvoice serve exited {server.process.returncode}:\n{tail(server.log)}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or the worker is still building the app
        time.sleep(0.1)
    pytest.fail(f"camvoice serve not ready within {SERVE_DEADLINE} s:\n{tail(server.log)}")


def tail(log: Path) -> str:
    """The end of a log, for a failure message."""
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"


@contextmanager
def serving(installed: Installed, port: int) -> Iterator[tuple[str, Path]]:
    """A ready `camvoice serve` (its URL and log), stopped afterwards whatever happened."""
    server = start_server(installed, port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(server, url)
        yield url, server.log
    finally:
        stop_server(server)


def check_web_role(url: str) -> None:
    """Probes, sign-in and the owner's pages answer with their success status and real HTML."""
    with requests.Session() as web:  # closed before the server stops: no idle keep-alive
        for probe in ("/healthz", "/readyz"):
            response = web.get(url + probe, timeout=10)
            assert response.status_code == 200, (probe, response.status_code)
        for page in ("/console", "/simulator"):  # signed out: a redirect to the sign-in page
            response = web.get(url + page, timeout=10)
            assert response.history and response.history[0].status_code in (302, 303), page
            assert_html(response, "/oauth/login")
        sign_in(web, url)
        for page in ("/console", "/simulator"):
            response = web.get(url + page, timeout=10)
            assert not response.history, f"{page} still redirects after signing in"
            assert_html(response, page)
            assert_assets(web, url, response.text)


def sign_in(web: requests.Session, url: str) -> None:
    """Post the sign-in form (with its CSRF token) as the owner created on the command line."""
    form = web.get(f"{url}/oauth/login", timeout=10)
    assert_html(form, "/oauth/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, "the sign-in form carries no CSRF token"
    data = {"csrf_token": token[1], "next": "/console", "email": OWNER, "password": PASSWORD}
    done = web.post(f"{url}/oauth/login", data=data, timeout=10)
    assert done.status_code == 200 and done.url.endswith("/console"), done.status_code


def assert_html(response: requests.Response, path: str) -> None:
    """A 200 HTML page at the expected path, rendered from the wheel's templates."""
    assert response.status_code == 200, (path, response.status_code)
    assert response.headers["Content-Type"].startswith("text/html"), path
    assert response.url.split("?")[0].endswith(path), response.url
    assert response.text.lstrip().lower().startswith("<!doctype html>"), path


def assert_assets(web: requests.Session, url: str, html: str) -> None:
    """Every local stylesheet and script a page names is served from the wheel's static files."""
    assets = set(re.findall(r'(?:src|href)="(/[^"]+\.(?:css|js))"', html))
    assert assets, "the page names no stylesheet or script"
    for asset in sorted(assets):
        response = web.get(url + asset, timeout=10)
        assert response.status_code == 200 and response.content, (asset, response.status_code)


# --- the tests --------------------------------------------------------------------------------


def test_dockerfile_build_stage_copies_every_shipped_package() -> None:
    """The image builds the wheel from what its build stage copies: a package missing there is
    missing from the image, with no error at build time."""
    copied = copied_top_level()
    shipped = shipped_packages()
    assert shipped - copied == set(), (
        f"deploy/Dockerfile's build stage does not copy {shipped - copied}"
    )
    readme = pyproject()["project"]["readme"]
    assert {"pyproject.toml", "uv.lock", readme} <= copied  # uv sync --frozen builds from these
    assert tree_packages() - shipped == set(), "a top-level package is left out of the wheel"
    script = pyproject()["project"]["scripts"]["camvoice"]
    assert script.split(".")[0] in shipped
    cmd = next(rest for keyword, rest in instructions(DOCKERFILE.read_text()) if keyword == "CMD")
    assert json.loads(cmd)[-1].split(".")[0] in shipped  # the web role's app module


def test_image_wheel_is_the_repo_wheel_with_every_tracked_file(
    image_wheel: Path, tmp_path: Path
) -> None:
    """The wheel built from the image's context equals the one built from the repository, and
    holds every tracked file of the shipped packages (templates, static files, hls.js, migrations,
    interaction models): package data cannot go missing in either."""
    repo_wheel = build_wheel(ROOT, tmp_path)
    in_image, in_repo = wheel_files(image_wheel), wheel_files(repo_wheel)
    assert in_image == in_repo, f"only in the repo's wheel: {sorted(in_repo - in_image)[:20]}"
    assert {PurePosixPath(n).parts[0] for n in in_image} == shipped_packages()
    missing = tracked_files(shipped_packages()) - in_image
    assert not missing, f"tracked but not in the wheel: {sorted(missing)[:20]}"


def test_wheel_ships_every_compiled_catalog(image_wheel: Path) -> None:
    """The .mo files are build output (not in git): the wheel's build hook compiles them from
    the .po catalogs, and each one in the wheel translates (README, "Languages")."""
    from babel.support import Translations

    from camvoice.languages import LOCALES

    with zipfile.ZipFile(image_wheel) as archive:
        for locale in set(LOCALES) - {"en"}:
            name = f"camvoice/translations/{locale}/LC_MESSAGES/messages.mo"
            assert name in archive.namelist(), f"{name} is not in the wheel"
            compiled = Translations(io.BytesIO(archive.read(name)))
            assert compiled.gettext("Sign in") != "Sign in", locale


def test_installed_wheel_runs_outside_the_tree(installed: Installed) -> None:
    """Every shipped package imports from the venv's site-packages, never from the source tree."""
    probe = (
        "import importlib, json, os, sys; print(json.dumps({'files': {p: importlib.import_module(p)"
        f".__file__ for p in {sorted(shipped_packages())!r}}}, "
        "'path': [os.path.abspath(p) for p in sys.path]}))"
    )
    output = run([str(installed.bin / "python"), "-c", probe], installed.home, installed.env())
    found = json.loads(output)
    site = next((installed.venv / "lib").glob("python3*/site-packages")).resolve()
    for package, file in found["files"].items():
        assert Path(file).resolve().is_relative_to(site), f"{package} imported from {file}"
    inside = [p for p in found["path"] if Path(p).resolve().is_relative_to(ROOT)]
    assert not inside, f"the source tree is on the installed python's path: {inside}"


def test_installed_wheel_serves_the_web_role(installed: Installed) -> None:
    """What the image's web role does, from the installed wheel: migrate, create an owner, serve;
    the health probes, sign-in, console, simulator and their static files answer."""
    assert "database is up to date" in installed.camvoice("db", "upgrade")
    created = installed.camvoice("accounts", "create", OWNER, "--password-stdin", stdin=PASSWORD)
    assert f"created account {OWNER}" in created
    assert (installed.home / "data" / "camvoice.db").exists()  # the data dir, not ./instance
    port = free_port()
    with serving(installed, port) as (url, log):
        check_web_role(url)
        german = requests.get(f"{url}/oauth/login", headers={"Accept-Language": "de"}, timeout=10)
        assert '<html lang="de">' in german.text and ">Anmelden</button>" in german.text
        assert "Traceback" not in log.read_text()
